"""Browser and session hardening (issue 9, item 10), checked on real settings in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from channels.routing import URLRouter
from django.test import Client

from fleetweb.core.routing import websocket_urlpatterns
from tests.communicators import WebsocketCommunicator

ROOT = Path(__file__).resolve().parents[3]
PRODUCTION = {"SECRET_KEY": "x" * 20 + "production-secret-key-for-the-test", "DEBUG": "false",
              "FLEET_PUBLIC_URL": "https://fleet.example.com"}


def run(code: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("ALLOWED_HOSTS", "FLEET_ALLOWED_HOSTS", "FLEET_PUBLIC_URL", "DEBUG")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**base, "DJANGO_SETTINGS_MODULE": "fleetweb.settings", "PYTHONPATH": str(ROOT),
                               **env})


def test_check_deploy_reports_nothing_with_production_settings(tmp_path):
    res = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**{k: v for k, v in os.environ.items() if k != "ALLOWED_HOSTS"}, **PRODUCTION,
                              "FLEET_VAR_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no issues" in res.stdout


def test_https_public_url_makes_cookies_secure_and_sends_hsts_and_allowed_hosts_are_not_a_wildcard():
    res = run("import django, json; django.setup(); from django.conf import settings as s; print(json.dumps("
              "[s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT,"
              " s.ALLOWED_HOSTS, getattr(s, 'SECURE_PROXY_SSL_HEADER', None)]))", **PRODUCTION)
    assert res.returncode == 0, res.stderr
    secure, csrf_secure, hsts, redirect, hosts, proxy = json.loads(res.stdout.strip().splitlines()[-1])
    assert secure and csrf_secure and hsts >= 31536000 and redirect
    assert hosts[0] == "fleet.example.com" and "*" not in hosts
    assert proxy is None  # X-Forwarded-Proto is trusted only when FLEET_TRUST_X_FORWARDED_PROTO=1
    res = run("import django; django.setup(); from django.conf import settings as s;"
              " print(s.SECURE_PROXY_SSL_HEADER)", **PRODUCTION, FLEET_TRUST_X_FORWARDED_PROTO="1")
    assert "HTTP_X_FORWARDED_PROTO" in res.stdout, res.stderr


@pytest.mark.django_db
def test_a_foreign_host_header_is_refused(settings):
    settings.ALLOWED_HOSTS = ["fleet.example.com", "localhost", "127.0.0.1", "[::1]"]
    assert Client(HTTP_HOST="evil.example.net").get("/login/").status_code == 400
    assert Client(HTTP_HOST="fleet.example.com").get("/login/").status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_dashboard_websocket_refuses_a_foreign_origin(settings):
    """A page on another site cannot open the dashboard socket with the victim's cookie: the origin
    check follows ALLOWED_HOSTS, which is no longer "*"."""
    settings.ALLOWED_HOSTS = ["fleet.example.com", "localhost", "127.0.0.1", "[::1]"]
    app = URLRouter(websocket_urlpatterns)
    evil = WebsocketCommunicator(app, "/ws/ui/", headers=[(b"origin", b"https://evil.example.net")])
    connected, _ = await evil.connect()
    assert not connected
    # Cleanup only: the refused socket's consumer never ends by itself (channels' denier waits for
    # a disconnect nobody sends); the communicator cancels it once this short wait is over.
    await evil.disconnect(timeout=1)
