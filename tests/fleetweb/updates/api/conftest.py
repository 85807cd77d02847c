import pytest


@pytest.fixture
def beta_group(acme):
    from fleetweb.fleet.models import Group

    return Group.objects.create(organization=acme, name="canary", slug="canary",
                                channel=acme.channels.get(name="beta"))


@pytest.fixture
def stored_files(media_root):
    """The files under FLEET_MEDIA_ROOT (directories do not count)."""
    return lambda: sorted(str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file()) \
        if media_root.exists() else []
