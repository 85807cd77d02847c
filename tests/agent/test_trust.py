"""What the agent trusts (issue 9 item 11): https or loopback only, the signing key pinned at
registration against ``--key-hash``, new keys only along the endorsement chain."""
from __future__ import annotations

from agent import config as cfg
from agent import keys, signing

from .test_cli import _register, register_server  # noqa: F401  (fixture)


def _pinned(tmp_path):
    return keys.pinned_key(tmp_path / "state")


def test_register_refuses_plain_http_to_a_non_loopback_server(tmp_path, disk_image, scratch_root):
    res = _register("http://192.0.2.10:8000", tmp_path, disk_image, scratch_root)
    assert res.returncode == cfg.EXIT_INSECURE_SERVER == 50
    assert "refusing plain http:// to 192.0.2.10" in res.stderr and "--insecure-http" in res.stderr
    assert not (tmp_path / "state" / cfg.AGENT_FILE).exists()


def test_register_accepts_loopback_http_and_pins_the_key_matching_key_hash(register_server, tmp_path,  # noqa: F811
                                                                           disk_image, scratch_root):
    _, public = signing.generate()
    register_server.extra.update(signing_key=public)
    res = _register(register_server.url, tmp_path, disk_image, scratch_root, "--key-hash", signing.fingerprint(public))
    assert res.returncode == 0, res.stderr
    assert _pinned(tmp_path) == public
    assert "no --key-hash" not in res.stderr


def test_register_refuses_a_server_key_that_does_not_match_key_hash(register_server, tmp_path,  # noqa: F811
                                                                    disk_image, scratch_root):
    """A network attacker (or another server) answering the registration: nothing stored or pinned."""
    _, attacker = signing.generate()
    _, expected = signing.generate()
    register_server.extra.update(signing_key=attacker)
    res = _register(register_server.url, tmp_path, disk_image, scratch_root, "--key-hash", signing.fingerprint(expected))
    assert res.returncode == cfg.EXIT_KEY_MISMATCH == 51
    assert "does not match --key-hash" in res.stderr
    assert not (tmp_path / "state" / cfg.AGENT_FILE).exists()
    assert _pinned(tmp_path) is None


def test_register_without_key_hash_pins_at_registration_and_warns(register_server, tmp_path,  # noqa: F811
                                                                  disk_image, scratch_root):
    _, public = signing.generate()
    register_server.extra.update(signing_key=public)
    res = _register(register_server.url, tmp_path, disk_image, scratch_root)
    assert res.returncode == 0, res.stderr
    assert "no --key-hash" in res.stderr
    assert _pinned(tmp_path) == public


def test_a_policy_with_an_unendorsed_key_is_refused_after_registration(register_server, tmp_path,  # noqa: F811
                                                                       disk_image, scratch_root):
    """MITM on the websocket: the first policy frame no longer decides the key."""
    _, public = signing.generate()
    register_server.extra.update(signing_key=public)
    assert _register(register_server.url, tmp_path, disk_image, scratch_root,
                     "--key-hash", signing.fingerprint(public)).returncode == 0
    attacker_raw, attacker = signing.generate()
    # a self-made chain: the attacker's key "endorsed" by itself, not by the pinned key
    chain = [{"public_key": public, "endorsement": ""},
             {"public_key": attacker, "endorsement": signing.endorse(attacker_raw, attacker)}]
    for policy in ({"signing_key": attacker},
                   {"signing_key": attacker, "signing_key_endorsement": signing.endorse(attacker_raw, attacker)},
                   {"signing_key": attacker, "signing_key_chain": chain}):
        result = keys.apply_policy_key(tmp_path / "state", policy)
        assert result.outcome == keys.MISMATCH
        assert _pinned(tmp_path) == public


def test_an_agent_offline_across_three_rotations_follows_the_chain(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    raw, first = signing.generate()
    keys.save_pin(state, first)
    chain = [{"public_key": first, "endorsement": ""}]
    for _ in range(3):
        new_raw, new = signing.generate()
        chain.append({"public_key": new, "endorsement": signing.endorse(raw, new)})
        raw = new_raw
    current = chain[-1]["public_key"]
    result = keys.apply_policy_key(state, {"signing_key": current, "signing_key_chain": chain,
                                           "signing_key_endorsement": chain[-1]["endorsement"]})
    assert result.outcome == keys.ROTATED
    assert keys.pinned_key(state) == current
    # one forged link anywhere breaks it
    keys.save_pin(state, first)
    _, forged = signing.generate()
    broken = chain[:2] + [{"public_key": forged, "endorsement": chain[2]["endorsement"]}] + chain[3:]
    assert keys.apply_policy_key(state, {"signing_key": current, "signing_key_chain": broken}).outcome == keys.MISMATCH
    assert keys.pinned_key(state) == first


def test_fingerprint_and_its_parsing():
    _, public = signing.generate()
    fp = signing.fingerprint(public)
    assert fp.startswith("sha256:") and len(fp) == 71
    assert signing.parse_fingerprint(fp.upper().replace("SHA256:", "sha256:")) == fp
    for bad in ("", "sha256:abc", fp[7:], "md5:" + fp[7:]):
        try:
            signing.parse_fingerprint(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_versions_order_as_semver_does():
    """Flatcar reports pre-releases and nightlies; a host on 3602.0.0-beta.1 must be offered 3602.0.0
    (the key once read the pre-release as a fifth number, above its release), and build metadata does
    not order (nebraska compares with semver)."""
    ordered = ["100.0.0", "100.0.10", "101.0.0", "3602.0.0-alpha", "3602.0.0-beta.1", "3602.0.0-beta.2",
               "3602.0.0-beta.11", "3602.0.0-rc.1", "3602.0.0", "3602.0.1"]
    assert sorted(reversed(ordered), key=signing.version_key) == ordered
    assert signing.version_key("3815.0.0+nightly-20231222-2100") == signing.version_key("3815.0.0")
    assert signing.version_key("1.0.0-1") < signing.version_key("1.0.0-alpha")  # numeric identifiers first, as semver
    assert signing.version_key("unknown") and signing.version_key("")  # any text has a key
