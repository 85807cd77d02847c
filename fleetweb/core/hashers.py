"""Password hashing with a bound on how many hashes run at once.

A PBKDF2 hash costs a core for a good fraction of a second and releases the GIL while it runs, so
twenty logins a second on request lanes would take every core from the event loop and its agents.
At most ``FLEET_PASSWORD_HASH_CONCURRENCY`` hashes run at once in a process; other logins wait for
a slot on their own lane.  The algorithm and stored format are Django's own: existing hashes verify
unchanged.
"""
from __future__ import annotations

import threading

from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher

_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()


def hash_slots() -> threading.BoundedSemaphore:
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(max(1, settings.FLEET_PASSWORD_HASH_CONCURRENCY))
        return _slots


class BoundedPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    def encode(self, password, salt, iterations=None):
        with hash_slots():
            return super().encode(password, salt, iterations)
