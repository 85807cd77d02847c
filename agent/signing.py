"""Release signatures: one definition of what is signed, for the server and the agent.

A release is signed with the organization's Ed25519 key over a short canonical message that
binds the version, the payload size and its SHA-256.  The agent checks the signature with the
key it pinned on first use *before* it downloads into, or touches, a partition, and checks the
downloaded bytes against size and digest before it changes the partition table.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SCHEME = "fleetweb-release-v1"


class SignatureError(ValueError):
    pass


def release_message(version: str, size: int, sha256: str) -> bytes:
    return f"{SCHEME}\nversion={version}\nsize={int(size)}\nsha256={sha256.lower()}\n".encode()


def key_id(public_key_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


def generate() -> tuple[bytes, str]:
    """A new key: (raw 32-byte private key, base64 public key)."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return raw, base64.b64encode(public).decode()


def sign(private_raw: bytes, version: str, size: int, sha256: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(private_raw)
    return base64.b64encode(key.sign(release_message(version, size, sha256))).decode()


def verify(public_key_b64: str, signature_b64: str, version: str, size: int, sha256: str) -> None:
    """Raise SignatureError unless the signature matches; never returns False silently."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        sig = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"malformed key or signature: {exc}") from None
    try:
        key.verify(sig, release_message(version, size, sha256))
    except InvalidSignature:
        raise SignatureError(f"signature does not match release {version} ({sha256[:12]}…)") from None


def version_key(version: str) -> tuple:
    """Order versions as semver does: 100.0.0 < 100.0.10 < 101.0.0 (numbers numerically); a
    pre-release sorts before its release (3602.0.0-beta.1 < 3602.0.0); build metadata is ignored
    (3815.0.0+nightly-20231222 == 3815.0.0).  Any text gets a key: a part that is not a number
    sorts after the numbers."""
    core, _, _build = version.partition("+")
    core, dash, pre = core.partition("-")

    def part(text: str) -> tuple:
        return (0, int(text), "") if text.isdigit() else (1, 0, text)

    release = (1,) if not dash else (0, *(part(p) for p in pre.split(".")))
    return tuple(part(p) for p in core.split(".")), release


ROTATION_SCHEME = "fleetweb-key-rotation-v1"


def rotation_message(new_public_key_b64: str) -> bytes:
    return f"{ROTATION_SCHEME}\nnew={new_public_key_b64}\n".encode()


def endorse(old_private_raw: bytes, new_public_key_b64: str) -> str:
    """The old key's signature over the new public key: what lets agents follow a rotation."""
    key = Ed25519PrivateKey.from_private_bytes(old_private_raw)
    return base64.b64encode(key.sign(rotation_message(new_public_key_b64))).decode()


def verify_rotation(pinned_public_key_b64: str, new_public_key_b64: str, endorsement_b64: str) -> None:
    """Raise SignatureError unless the pinned key endorsed the new key."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pinned_public_key_b64, validate=True))
        key.verify(base64.b64decode(endorsement_b64, validate=True), rotation_message(new_public_key_b64))
    except (ValueError, TypeError, InvalidSignature):
        raise SignatureError("the new signing key is not endorsed by the pinned key") from None


def sign_bytes(private_raw: bytes, data: bytes) -> str:
    """A detached Ed25519 signature (base64) over ``data`` as is: e.g. an image build's SHA256SUMS.

    Nothing else signed with the key can collide with it: release and rotation messages begin
    with their scheme names, a SHA256SUMS file with a hex digest.
    """
    key = Ed25519PrivateKey.from_private_bytes(private_raw)
    return base64.b64encode(key.sign(data)).decode()


def verify_bytes(public_key_b64: str, signature_b64: str, data: bytes) -> None:
    """Raise SignatureError unless ``signature_b64`` is the key's signature over ``data``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        key.verify(base64.b64decode(signature_b64.strip(), validate=True), data)
    except (ValueError, TypeError, InvalidSignature):
        raise SignatureError("signature does not match the signed file") from None


# Fingerprints and endorsement chains (issue 9 item 11): the enrollment command pins the
# organization's key by its fingerprint, as ``kubeadm join --discovery-token-ca-cert-hash`` does.
FINGERPRINT_PREFIX = "sha256:"
MAX_KEY_CHAIN = 64


def fingerprint(public_key_b64: str) -> str:
    """``sha256:<hex>`` of the raw 32-byte Ed25519 public key."""
    return FINGERPRINT_PREFIX + hashlib.sha256(base64.b64decode(public_key_b64, validate=True)).hexdigest()


def parse_fingerprint(value: str) -> str:
    """Normalize ``sha256:<64 hex>``; raise ValueError for anything else."""
    value = (value or "").strip().lower()
    digest = value[len(FINGERPRINT_PREFIX):] if value.startswith(FINGERPRINT_PREFIX) else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{value!r} is not a key hash of the form sha256:<64 hex digits>")
    return FINGERPRINT_PREFIX + digest


def follow_chain(pinned_public_key_b64: str, current_public_key_b64: str, chain: list) -> list[str]:
    """The keys from the pinned one to ``current``, each endorsed by the one before.

    ``chain`` lists ``{"public_key", "endorsement"}`` entries, oldest first (an entry's endorsement
    is the previous key's signature over it). Raises SignatureError unless an unbroken run of
    endorsements leads from the pinned key to the current key. At most MAX_KEY_CHAIN links.
    """
    if pinned_public_key_b64 == current_public_key_b64:
        return [current_public_key_b64]
    if not isinstance(chain, list) or len(chain) > MAX_KEY_CHAIN:
        raise SignatureError(f"the key chain is missing or longer than {MAX_KEY_CHAIN} links")
    keys = [pinned_public_key_b64]
    start = next((i for i, link in enumerate(chain)
                  if isinstance(link, dict) and link.get("public_key") == pinned_public_key_b64), None)
    if start is None:
        raise SignatureError("the pinned signing key is not in the server's key chain")
    for link in chain[start + 1:]:
        if not isinstance(link, dict):
            raise SignatureError("malformed key chain")
        new, endorsement = str(link.get("public_key") or ""), str(link.get("endorsement") or "")
        verify_rotation(keys[-1], new, endorsement)
        keys.append(new)
        if new == current_public_key_b64:
            return keys
    raise SignatureError("the key chain does not lead from the pinned key to the current key")
