"""Releases: streamed to the store, checked against the declared size and hash, signed."""
import hashlib
import io

import pytest

from agent import signing
from fleetweb.updates.models import Release, UpdateError


def test_it_stores_hashes_and_signs_a_release(acme, make_release, media_root):
    release = make_release("101.0.0", b"x" * 5000)
    assert release.size == 5000
    assert release.sha256 == hashlib.sha256(b"x" * 5000).hexdigest()
    assert release.path.read_bytes() == b"x" * 5000
    signing.verify(release.signing_key.public_key, release.signature, "101.0.0", 5000, release.sha256)


def test_it_keeps_the_private_key_encrypted_at_rest(acme):
    from fleetweb.updates.models import SigningKey

    key = SigningKey.objects.active(acme)
    assert key is not None and key.private_encrypted.startswith("gAAAAA")  # a Fernet token
    assert len(key.private_encrypted) > 64


@pytest.mark.parametrize("kwargs,field", [
    ({"sha256": "0" * 64}, "sha256"),
    ({"size": 3}, "size"),
    ({"sha256": "not-hex"}, "sha256"),
])
def test_it_refuses_a_payload_that_does_not_match_and_stores_nothing(acme, media_root, kwargs, field):
    with pytest.raises(UpdateError) as err:
        Release.objects.create_from_upload(acme, "101.0.0", io.BytesIO(b"payload" * 10), **kwargs)
    assert err.value.field == field
    assert not Release.objects.exists()
    store = media_root / "releases" / "acme"
    assert not store.exists() or list(store.iterdir()) == []


@pytest.mark.parametrize("version", ["3815.0.0+nightly-20231222-2100", "3602.0.0-beta-1", "1632.3.0"])
def test_it_takes_flatcar_and_container_linux_versions(acme, media_root, version):
    """Semver's pre-release and build parts with hyphens, as Flatcar's nightlies report them."""
    assert Release.objects.create_from_upload(acme, version, io.BytesIO(b"data")).version == version


@pytest.mark.parametrize("version", ["", "abc", "1", "1.2.3.4.5", "1.0/../../x", "1.0.0+", "1.0.0+a/b", "1.0.0 +a"])
def test_it_refuses_bad_versions(acme, version):
    with pytest.raises(UpdateError) as err:
        Release.objects.create_from_upload(acme, version, io.BytesIO(b"data"))
    assert err.value.field == "version"
    assert not Release.objects.exists()


def test_it_refuses_a_duplicate_version_with_a_conflict(acme, make_release):
    make_release("101.0.0")
    with pytest.raises(UpdateError) as err:
        make_release("101.0.0")
    assert err.value.status == 409
    assert Release.objects.count() == 1


def test_a_rotated_key_is_endorsed_by_the_old_one_and_pushed_to_agents(acme, web_group):
    from fleetweb.updates.models import SigningKey

    old = SigningKey.objects.active(acme)
    revision = web_group.policy_revision
    new = SigningKey.objects.rotate(acme, actor="alice")
    signing.verify_rotation(old.public_key, new.public_key, new.endorsement)
    web_group.refresh_from_db()
    policy = web_group.policy()
    assert policy["revision"] == revision + 1
    assert policy["signing_key"] == new.public_key and policy["signing_key_endorsement"] == new.endorsement
    assert SigningKey.objects.active(acme) == new
    with pytest.raises(signing.SignatureError):
        signing.verify_rotation(new.public_key, old.public_key, new.endorsement)


def test_the_store_sweep_removes_only_payloads_no_release_refers_to(acme, make_release, media_root):
    import os

    from fleetweb.updates.tasks import sweep_payload_store

    kept = make_release("101.0.0")
    orphan = media_root / "releases" / "acme" / ("f" * 64 + ".usr")
    orphan.write_bytes(b"left behind by a rolled-back transaction")
    old = os.stat(orphan).st_mtime - 7200
    os.utime(orphan, (old, old))
    fresh = media_root / "releases" / "acme" / ("e" * 64 + ".usr")
    fresh.write_bytes(b"an upload still in its transaction")
    assert sweep_payload_store() == 1
    assert not orphan.exists() and fresh.exists() and kept.path.exists()


def test_a_release_is_an_update_for_its_own_pre_releases_not_the_other_way():
    """A host on 3602.0.0-beta.1 gets 3602.0.0 (its key once sorted the pre-release above its release,
    so the host was skipped); build metadata orders nothing, as in semver."""
    final = Release(version="3602.0.0")
    assert final.is_update_for("3602.0.0-beta.1")
    assert not Release(version="3602.0.0-beta.1").is_update_for("3602.0.0")
    assert Release(version="3602.0.0-beta.1").is_update_for("3602.0.0", allow_downgrade=True)
    assert not final.is_update_for("3602.0.0+build-7")
