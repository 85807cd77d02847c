"""What other domains add to a group's `policy` frame.

Apps register a contributor in their AppConfig.ready(); `Group.policy()` merges the fields each
returns (e.g. reboots: etcd credentials and lock settings; cloudconfig: the effective document's
revision).  A contributor takes the group and returns a dict of protocol fields.
"""
from __future__ import annotations

from collections.abc import Callable

_contributors: list[Callable] = []


def contributor(func: Callable) -> Callable:
    if func not in _contributors:
        _contributors.append(func)
    return func


_host_contributors: list[Callable] = []


def host_contributor(func: Callable) -> Callable:
    """Fields only a host's own frame carries (its etcd credentials), merged by `Host.policy()`."""
    if func not in _host_contributors:
        _host_contributors.append(func)
    return func


def _merged(contributors: list[Callable], obj) -> dict:
    """The fields every contributor returns for ``obj`` (a group or a host), later ones winning."""
    fields: dict = {}
    for func in contributors:
        fields.update(func(obj) or {})
    return fields


_reported_contributors: list[Callable] = []


def reported_contributor(func: Callable) -> Callable:
    """Fields of a group's policy that agents report back in their heartbeats (what they applied),
    so that reconciliation resends the policy to an agent still behind on one of them."""
    if func not in _reported_contributors:
        _reported_contributors.append(func)
    return func


def reported_fields(group) -> dict:
    return _merged(_reported_contributors, group)


_reported_host_contributors: list[Callable] = []


def reported_host_contributor(func: Callable) -> Callable:
    """The same for the fields of a host's own frame (its etcd credentials' revision).  A contributor
    takes a list of host ids (a batch of heartbeats) and returns ``{host_id: {field: value}}``."""
    if func not in _reported_host_contributors:
        _reported_host_contributors.append(func)
    return func


def reported_host_fields(host_ids: list) -> dict:
    out: dict = {}
    for func in _reported_host_contributors:
        for host_id, fields in (func(host_ids) or {}).items():
            out.setdefault(host_id, {}).update(fields)
    return out


def host_fields(host) -> dict:
    return _merged(_host_contributors, host)


def extra_fields(group) -> dict:
    return _merged(_contributors, group)
