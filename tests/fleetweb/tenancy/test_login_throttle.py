"""Brute force and cheap denial of service at login (issue 9, item 3): django-axes locks out an
address or a username after FLEET_LOGIN_FAILURE_LIMIT failures, before any password hashing; bad
API keys are throttled per address.  Each attack below succeeded (or hashed) before this fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from fleetweb.tenancy.models import Organization
from tests.conftest import PASSWORD

LIMIT = 5
ROOT = Path(__file__).resolve().parents[3]


class CountingHasher(PBKDF2PasswordHasher):
    """The real PBKDF2 hasher, counting how often it runs."""

    runs = 0

    def encode(self, password, salt, iterations=None):
        CountingHasher.runs += 1
        return super().encode(password, salt, iterations)


@pytest.fixture
def counting_hasher(settings):
    settings.PASSWORD_HASHERS = ["tests.fleetweb.tenancy.test_login_throttle.CountingHasher"]
    CountingHasher.runs = 0
    return CountingHasher


def fail(client, url="/login/", username="alice", n=LIMIT):
    for _ in range(n):
        r = client.post(url, {"username": username, "password": "wrong-password-123"})
        assert r.status_code in (200, 429)
    return r


def test_a_brute_force_is_locked_out_before_any_password_hashing(counting_hasher, alice):
    fail(Client())
    before = counting_hasher.runs
    r = Client().post("/login/", {"username": "alice", "password": PASSWORD})  # even the right password
    assert r.status_code == 429
    assert "Too many failed logins" in r.content.decode()
    assert counting_hasher.runs == before  # refused before the hasher ran
    assert "_auth_user_id" not in Client().session


def test_the_lock_is_per_address_too_whatever_the_username(alice):
    for i in range(LIMIT):
        Client().post("/login/", {"username": f"guess-{i}", "password": "wrong-password-123"})
    r = Client().post("/login/", {"username": "alice", "password": PASSWORD})
    assert r.status_code == 429
    other = Client(REMOTE_ADDR="10.9.9.9").post("/login/", {"username": "alice", "password": PASSWORD})
    assert other.status_code == 302  # another address, and alice's own count was not touched


def test_the_admin_login_is_covered(alice):
    fail(Client(), url="/admin/login/")
    r = Client().post("/admin/login/", {"username": "alice", "password": PASSWORD})
    assert r.status_code == 429


def test_the_lock_is_kept_in_the_database_so_every_process_sees_it(alice):
    """Another web process is another client with no shared memory: the lock is the database's
    AccessAttempt row, which a second client from another address (same username) runs into."""
    fail(Client(REMOTE_ADDR="10.1.1.1"))
    assert AccessAttempt.objects.filter(username="alice", failures_since_start__gte=LIMIT).exists()
    second = Client(REMOTE_ADDR="10.2.2.2")
    assert second.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 429
    AccessAttempt.objects.all().delete()  # the database is the only store: clear it and the lock is gone
    assert second.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302


SECOND_PROCESS = """
import django, os, sys
django.setup()
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
r = Client(REMOTE_ADDR="10.3.3.3").post("/login/", {"username": "alice", "password": os.environ["LOGIN_PASSWORD"]})
print(r.status_code)
"""


@pytest.mark.django_db(transaction=True)
def test_a_second_process_on_the_same_database_is_locked_out_too(alice):
    """A real second Python process (another web worker) reads the same database: it refuses alice."""
    fail(Client(REMOTE_ADDR="10.1.1.1"))
    db = connection.settings_dict
    url = (f"sqlite:///{db['NAME']}" if connection.vendor == "sqlite"
           else urlparse(os.environ["DATABASE_URL"])._replace(path="/" + db["NAME"]).geturl())
    env = {**os.environ, "DATABASE_URL": url, "LOGIN_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT),
           "DJANGO_SETTINGS_MODULE": "fleetweb.settings"}
    res = subprocess.run([sys.executable, "-c", SECOND_PROCESS], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1:] == ["429"], res.stderr[-2000:]


def test_a_good_login_before_the_limit_resets_the_count(alice):
    fail(Client(), n=LIMIT - 1)
    assert Client().post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    fail(Client(), n=LIMIT - 1)
    assert Client().post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302


def test_bad_api_keys_are_throttled_per_address_before_any_lookup(alice, settings, django_assert_num_queries):
    settings.FLEET_API_KEY_FAILURE_RATE = "3/hour"  # however slowly the four requests run
    guesser = APIClient(REMOTE_ADDR="10.6.6.6")
    guesser.credentials(HTTP_AUTHORIZATION="Bearer fwk_AAAAAAAAAAAA_guess")
    for _ in range(3):
        assert guesser.get("/api/v1/hosts/").status_code == 401
    with django_assert_num_queries(0):
        r = guesser.get("/api/v1/hosts/")
    assert r.status_code == 429
    assert r.json()["code"] == "throttled"
    # the owner of a real key elsewhere is not affected
    assert alice.get("/api/v1/hosts/").status_code == 200


def test_bootstrap_refuses_a_weak_password_and_creates_nothing(db):
    for weak in ("short1", "password1234", "123456789012"):
        with pytest.raises(CommandError, match="too weak"):
            call_command("bootstrap", org="Weak", user="alice", password=weak)
    assert not Organization.objects.filter(slug="weak").exists()
