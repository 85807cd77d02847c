"""Request bodies are bounded while they are read (issue 9, item 6), against a real uvicorn.

Fails on main before this fix: Django spools the whole chunked body to a temporary file before any
view runs, so the temp directory grows by the size of the body."""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import BIN, REDIS_URL, ROOT, database_url, free_port, stop_process, wait_for

GIB = 1024**3
CHUNK = 1024**2


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def server(transactional_db, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": REDIS_URL, "TMPDIR": str(spool),
           "FLEET_REDIS_PREFIX": f"fleet-test-{uuid.uuid4().hex[:8]}", "FLEET_PUBLIC_URL": url,
           "DJANGO_SETTINGS_MODULE": "fleetweb.settings", "PYTHONUNBUFFERED": "1",
           "FLEET_MEDIA_ROOT": str(tmp_path / "media")}
    proc = subprocess.Popen([BIN / "uvicorn", "fleetweb.asgi:application", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log"],
                            cwd=ROOT, env=env, stdout=open(tmp_path / "server.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 what="the ASGI server")
        yield port, proc, spool
    finally:
        stop_process(proc)


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            [h for h in data.split(b"\r\n\r\n")[0].split(b"\r\n") if h.lower().startswith(b"content-length")][0]
            .split(b":")[1]):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), json.loads(body)


def post_chunked(port: int, path: str, total: int) -> tuple[int, dict, int]:
    """POST up to `total` bytes chunked; stop as soon as the server answers. Returns status, body, sent."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    piece = f"{CHUNK:x}\r\n".encode() + b"a" * CHUNK + b"\r\n"
    sent = 0
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(piece)
            sent += CHUNK
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, body = read_response(sock)
    sock.close()
    return status, body, sent


@pytest.mark.parametrize("path", ["/api/v1/hosts/", "/v1/update/"])
def test_one_gib_chunked_body_is_refused_while_read(server, path):
    port, proc, spool = server
    rss_before = rss_kib(proc.pid)
    status, body, sent = post_chunked(port, path, 1 * GIB)
    assert status == 413
    assert body["code"] == "body_too_large"
    assert sent < 1 * GIB
    assert tree_size(spool) == 0
    assert rss_kib(proc.pid) - rss_before < 64 * 1024  # KiB: far below the body's size


def test_release_upload_over_its_limit_is_refused(server):
    port, _, spool = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST /api/v1/releases/ HTTP/1.1\r\nHost: x\r\nContent-Length: {9 * GIB}\r\n\r\n".encode())
        status, body = read_response(sock)
    assert status == 413 and body["code"] == "body_too_large"
    assert tree_size(spool) == 0


def test_declared_length_over_the_limit_is_refused_before_reading(server):
    port, proc, spool = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/v1/hosts/ HTTP/1.1\r\nHost: x\r\nContent-Length: 53687091200\r\n\r\n")
        status, body = read_response(sock)
    assert status == 413 and body["code"] == "body_too_large"
    assert tree_size(spool) == 0


def test_small_bodies_still_reach_the_view(server):
    port, _, _ = server
    r = httpx.post(f"http://127.0.0.1:{port}/api/v1/hosts/", json={"a": 1})
    assert r.status_code in (401, 403)


@pytest.fixture
def logged_server(transactional_db, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": REDIS_URL, "FLEET_PUBLIC_URL": url,
           "FLEET_REDIS_PREFIX": f"fleet-test-{uuid.uuid4().hex[:8]}", "DJANGO_SETTINGS_MODULE": "fleetweb.settings",
           "PYTHONUNBUFFERED": "1", "FLEET_MEDIA_ROOT": str(tmp_path / "media")}
    log = tmp_path / "server.log"
    proc = subprocess.Popen([BIN / "uvicorn", "fleetweb.asgi:application", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 what="the ASGI server")
        yield url, log
    finally:
        stop_process(proc)


def test_the_access_log_never_contains_url_secrets(logged_server):
    """Fails on main before this fix: uvicorn's access log prints the secret paths as requested."""
    url, log = logged_server
    secret = "Zq8" + uuid.uuid4().hex + "x"
    paths = [f"/cloud-config/{secret}", f"/fleetlock/{secret}/v1/pre-reboot", f"/v1/update/{secret}/",
             f"/payloads/1/{uuid.uuid4()}/1/{secret}"]
    for path in paths:
        httpx.get(url + path)
    httpx.get(url + "/healthz?marker=done")
    wait_for(lambda: "marker=done" in log.read_text(), what="the access log line")
    text = log.read_text()
    assert "/cloud-config/<redacted>" in text
    assert secret not in text
