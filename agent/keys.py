"""The release signing key, pinned on first use (``<state-dir>/signing-key.json``).

The first ``policy`` frame carrying ``signing_key`` pins it.  A different key later is accepted
only with ``signing_key_endorsement``: the pinned key's signature over the new one
(:func:`agent.signing.verify_rotation`).  Anything else keeps the old pin.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

from agent import signing
from agent.updateconf import atomic_write

PIN_FILE = "signing-key.json"

PINNED, UNCHANGED, ROTATED, MISMATCH, ABSENT = "pinned", "unchanged", "rotated", "mismatch", "absent"


@dataclass
class PinResult:
    outcome: str           # one of the constants above
    key_id: str | None
    previous_key_id: str | None = None
    message: str = ""


def load_pin(state_dir: str | Path) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / PIN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("public_key"), str) else None


def pinned_key(state_dir: str | Path) -> str | None:
    pin = load_pin(state_dir)
    return pin["public_key"] if pin else None


def _save(state_dir: str | Path, public_key: str, history: list) -> None:
    data = {"public_key": public_key, "key_id": signing.key_id(public_key), "pinned_at": int(time.time()),
            "history": history}
    atomic_write(Path(state_dir) / PIN_FILE, json.dumps(data, indent=2) + "\n", 0o644)


def _valid_key(public_key: str) -> bool:
    try:
        return len(base64.b64decode(public_key, validate=True)) == 32
    except ValueError:
        return False


class TrustError(ValueError):
    pass


def pin_at_registration(state_dir: str | Path, answer: dict, key_hash: str | None) -> str | None:
    """Check the register answer's signing key against ``--key-hash`` and return it (pin it with
    :func:`save_pin` once the registration is stored). Raise TrustError on a mismatch."""
    key = answer.get("signing_key")
    if not key or not _valid_key(key):
        if key_hash:
            raise TrustError("the server's register answer carries no valid signing key to check --key-hash against")
        return None
    actual = signing.fingerprint(key)
    if key_hash and actual != key_hash:
        raise TrustError(f"the server's signing key {actual} does not match --key-hash {key_hash}: "
                         f"another server (or a network attacker) answered; nothing was stored")
    return key


def save_pin(state_dir: str | Path, public_key: str) -> None:
    _save(state_dir, public_key, [])


def apply_policy_key(state_dir: str | Path, policy: dict) -> PinResult:
    """Pin, keep, or rotate the signing key a policy carries."""
    new = policy.get("signing_key")
    if not new:
        pin = load_pin(state_dir)
        return PinResult(ABSENT, pin["key_id"] if pin else None)
    if not _valid_key(new):
        return PinResult(MISMATCH, None, message="the policy's signing_key is not a base64 Ed25519 public key")
    pin = load_pin(state_dir)
    if pin is None:
        _save(state_dir, new, [])
        return PinResult(PINNED, signing.key_id(new))
    old = pin["public_key"]
    if old == new:
        return PinResult(UNCHANGED, pin["key_id"])
    endorsement = policy.get("signing_key_endorsement")
    old_id, new_id = signing.key_id(old), signing.key_id(new)
    chain = policy.get("signing_key_chain")
    if chain:
        # Follow every endorsement from the pinned key to the current one (an agent offline across
        # several rotations); an unendorsed key (a network attacker's) breaks the chain.
        try:
            signing.follow_chain(old, new, chain)
        except signing.SignatureError as exc:
            return PinResult(MISMATCH, old_id, message=f"signing key {new_id} is not reachable from the pinned key "
                                                       f"{old_id} by endorsements ({exc}); keeping the pin")
        history = list(pin.get("history") or []) + [{"public_key": old, "key_id": old_id}]
        _save(state_dir, new, history[-10:])
        return PinResult(ROTATED, new_id, previous_key_id=old_id)
    if not endorsement:
        return PinResult(MISMATCH, old_id, message=f"the server offers signing key {new_id} but {old_id} is pinned "
                                                   f"and there is no endorsement; rotate the key on the server "
                                                   f"(the old key must endorse the new one)")
    try:
        signing.verify_rotation(old, new, endorsement)
    except signing.SignatureError:
        return PinResult(MISMATCH, old_id, message=f"signing key {new_id} is not endorsed by the pinned key "
                                                   f"{old_id}; keeping the pin")
    history = list(pin.get("history") or []) + [{"public_key": old, "key_id": old_id}]
    _save(state_dir, new, history[-10:])
    return PinResult(ROTATED, new_id, previous_key_id=old_id)
