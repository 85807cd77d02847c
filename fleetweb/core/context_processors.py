from fleetweb.reboots import etcd


def organization(request):
    return {"organization": getattr(request, "organization", None), "role": getattr(request, "role", None)}


def etcd_isolation(request):
    """The dashboard's banner when etcd has no auth: tenants are not isolated in etcd (issue 9 §8)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated or etcd.auth_enabled():
        return {}
    return {"etcd_isolation_warning": etcd.ISOLATION_OFF_MESSAGE}
