"""Signing with the organization's release key for files other than releases (a build's SHA256SUMS).

The private key is decrypted the way ``SigningKey.sign`` does it (Fernet, derived from the
settings) and handed to :func:`agent.signing.sign_bytes`: one definition of the signature."""
from __future__ import annotations

from agent import signing
from fleetweb.updates.models import SigningKey, _fernet


def sign_bytes(organization, data: bytes) -> str:
    """Base64 Ed25519 signature over ``data`` with the organization's active key (made if none)."""
    key = SigningKey.objects.ensure(organization)
    return signing.sign_bytes(_fernet().decrypt(key.private_encrypted.encode()), data)
