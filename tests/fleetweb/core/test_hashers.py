"""Password hashing is bounded (fleetweb/core/hashers.py): a burst of logins cannot take every core."""
from __future__ import annotations

import sys
import threading
import time

from django.contrib.auth.hashers import check_password, make_password

from fleetweb.core import hashers


def _waiting_for_a_slot(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_filename == hashers.__file__ and frame.f_code.co_name == "encode":
            inner = sys._current_frames().get(thread.ident)
            return inner is not None and inner.f_code.co_filename == threading.__file__
        frame = frame.f_back
    return False


def test_a_login_waits_for_a_free_hash_slot_and_then_verifies():
    encoded = make_password("persona-passphrase-7")
    assert encoded.startswith("pbkdf2_sha256$")  # Django's own format: existing hashes verify unchanged
    results = []
    slots = hashers.hash_slots()
    with slots:  # every slot taken (the default is one)
        login = threading.Thread(target=lambda: results.append(check_password("persona-passphrase-7", encoded)))
        login.start()
        deadline = time.monotonic() + 60
        while not _waiting_for_a_slot(login):
            assert login.is_alive() and time.monotonic() < deadline, "the login hashed without a free slot"
            time.sleep(0.01)
    login.join(timeout=60)
    assert results == [True]
