import io
import uuid

import pytest


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.FLEET_MEDIA_ROOT = tmp_path / "media"
    return settings.FLEET_MEDIA_ROOT


@pytest.fixture
def make_release(acme):
    from fleetweb.updates.models import Release

    def make(version, data=None, org=None):
        payload = data if data is not None else f"usr image {version}".encode() * 100
        return Release.objects.create_from_upload(org or acme, version, io.BytesIO(payload), actor="alice")

    return make


@pytest.fixture
def online_hosts(web_group, make_host):
    def make(n, **kw):
        from fleetweb.fleet.models import Host

        hosts = [make_host(web_group, hostname=f"web-{i:02d}", **kw) for i in range(n)]
        # Connected, as an agent's host: the wave grants only hosts it can tell now.
        Host.objects.filter(pk__in=[h.pk for h in hosts]).update(online=True, connection_id=uuid.uuid4())
        return hosts

    return make


@pytest.fixture(autouse=True)
def run_on_commit(request):
    """Tests in a wrapping transaction never commit: run on_commit hooks (eager Celery rollout
    waves, hub pushes) as each block would on commit."""
    if "transactional_db" in request.fixturenames or request.node.get_closest_marker("django_db") and \
            request.node.get_closest_marker("django_db").kwargs.get("transaction"):
        yield
        return
    from django.db import transaction

    original = transaction.on_commit

    def immediately(func, using=None, robust=False):
        func()

    transaction.on_commit = immediately
    try:
        yield
    finally:
        transaction.on_commit = original
