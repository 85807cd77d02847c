"""``field__any=[...]``: membership in a long list of ids as one array parameter.

``field__in=[...]`` renders a placeholder per value and Django prepares each one on the way (the
reconciliation after a heartbeat batch filters 5,000 host ids: a tenth of the agents' thread in a
profile of the status phase).  On PostgreSQL ``__any`` sends the list as one array, ``= ANY(%s)``;
elsewhere it is ``IN``.  Registered for UUID fields (host ids) by ``CoreConfig.ready``."""
from __future__ import annotations

from django.db.models import Lookup
from django.db.models.lookups import In


class AnyOf(Lookup):
    lookup_name = "any"

    def get_prep_lookup(self):
        return list(self.rhs)

    def as_sql(self, compiler, connection):
        if connection.vendor != "postgresql":
            return compiler.compile(In(self.lhs, self.rhs))
        lhs, lhs_params = self.process_lhs(compiler, connection)
        array_type = f"{self.lhs.output_field.cast_db_type(connection)}[]"
        return f"{lhs} = ANY(%s::{array_type})", [*lhs_params, self.rhs]
