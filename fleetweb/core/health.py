from django.db import connection
from django.http import JsonResponse

from fleetweb.reboots import etcd


def healthz(request):
    """Liveness + database reachability, for load balancers and the test harness; says plainly
    when tenants are not isolated in etcd (etcd without auth, issue 9 §8)."""
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    body = {"status": "ok", "etcd_isolation": etcd.auth_enabled()}
    if not body["etcd_isolation"]:
        body["etcd_isolation_message"] = etcd.ISOLATION_OFF_MESSAGE
    return JsonResponse(body)
