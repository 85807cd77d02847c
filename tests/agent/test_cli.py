"""The agent CLI: register (errors and success), status --json."""
from __future__ import annotations

import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent import config as cfg

from .conftest import free_port, read_json, run_agent

TOKEN_CODES = {"bad": "token_invalid", "old": "token_expired", "gone": "token_revoked", "used": "token_exhausted"}


@pytest.fixture
def register_server():
    """A tiny stand-in for POST /api/v1/agents/register; records requests."""
    seen: list[dict] = []
    extra: dict = {}  # more fields for the 201 answer (e.g. the signing key)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "body": body})
            if self.path != "/api/v1/agents/register":
                return self._answer(404, {"detail": "not found"})
            if body["token"] in TOKEN_CODES:
                code = TOKEN_CODES[body["token"]]
                return self._answer(403 if code != "token_invalid" else 401, {"detail": f"token: {code}", "code": code})
            self._answer(201, {"host_id": "7d3c", "credential": "cred-xyz", "ws_url": "/ws/agent/",
                               "group": "web", "org": "acme", **extra})

        def _answer(self, status, payload):
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.seen = seen
    server.extra = extra
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def _register(url, tmp_path, disk, root, *extra, token="good"):
    return run_agent("register", "--server", url, "--token", token, "--state-dir", str(tmp_path / "state"),
                     "--disk", str(disk), "--root", str(root), *extra)


def test_it_registers_and_stores_a_0600_credential_and_agent_json(register_server, tmp_path, disk_image, scratch_root):
    res = _register(register_server.url, tmp_path, disk_image, scratch_root, "--hostname", "node-7")
    assert res.returncode == 0, res.stderr
    assert "registered host 7d3c" in res.stdout
    cred = tmp_path / "state" / "credential"
    assert cred.read_text().strip() == "cred-xyz"
    assert stat.S_IMODE(os.stat(cred).st_mode) == 0o600
    agent_json = read_json(tmp_path / "state" / "agent.json")
    assert agent_json["ws_url"] == register_server.url.replace("http://", "ws://") + "/ws/agent/"
    assert agent_json["host_id"] == "7d3c" and agent_json["disk"] == str(disk_image)
    assert agent_json["machine_id"] == "0123456789abcdef0123456789abcdef"
    body = register_server.seen[0]["body"]
    assert body["hostname"] == "node-7" and body["channel"] == "stable" and body["reboot_strategy"] is None
    assert body["version"] == "1.0.0" and len(body["boot_id"]) == 36
    assert [p["label"] for p in body["partitions"]] == ["USR-A", "USR-B"]
    assert body["partitions"][0]["active"] is True


def test_it_writes_the_machine_id_when_given_and_missing(register_server, tmp_path, disk_image, scratch_root):
    (scratch_root / "etc" / "machine-id").unlink()
    res = _register(register_server.url, tmp_path, disk_image, scratch_root)
    assert res.returncode == cfg.EXIT_MACHINE_ID_MISSING
    assert res.stderr.startswith("agent: error: no machine id") and "--machine-id" in res.stderr
    res = _register(register_server.url, tmp_path, disk_image, scratch_root, "--machine-id", "feedface" * 4)
    assert res.returncode == 0, res.stderr
    assert (scratch_root / "etc" / "machine-id").read_text().strip() == "feedface" * 4


@pytest.mark.parametrize("token,code", [("bad", cfg.EXIT_TOKEN_INVALID), ("old", cfg.EXIT_TOKEN_EXPIRED),
                                        ("gone", cfg.EXIT_TOKEN_REVOKED), ("used", cfg.EXIT_TOKEN_EXHAUSTED)])
def test_it_exits_with_a_distinct_code_for_each_token_error(register_server, tmp_path, disk_image, scratch_root,
                                                              token, code):
    res = _register(register_server.url, tmp_path, disk_image, scratch_root, token=token)
    assert res.returncode == code
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("agent: error: enrollment token rejected")
    assert TOKEN_CODES[token] in res.stderr
    assert not (tmp_path / "state" / "credential").exists()


def test_it_exits_server_unreachable_for_a_closed_port(tmp_path, disk_image, scratch_root):
    res = _register(f"http://127.0.0.1:{free_port()}", tmp_path, disk_image, scratch_root)
    assert res.returncode == cfg.EXIT_SERVER_UNREACHABLE
    assert res.stderr.startswith("agent: error: cannot reach the server") and "Traceback" not in res.stderr


def test_it_exits_disk_missing_for_a_missing_or_blank_disk(tmp_path, scratch_root):
    res = _register("http://127.0.0.1:1", tmp_path, tmp_path / "nope.img", scratch_root)
    assert res.returncode == cfg.EXIT_DISK_MISSING
    assert "nope.img does not exist" in res.stderr and "Traceback" not in res.stderr
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(65536))
    res = _register("http://127.0.0.1:1", tmp_path, blank, scratch_root)
    assert res.returncode == cfg.EXIT_DISK_MISSING
    assert "no valid GPT" in res.stderr


def test_it_exits_not_registered_for_run_and_status_without_state(tmp_path):
    for args in (["run", "--once"], ["status"]):
        res = run_agent(*args, "--state-dir", str(tmp_path / "empty"))
        assert res.returncode == cfg.EXIT_NOT_REGISTERED
        assert res.stderr.startswith("agent: error: not registered")


def test_it_shows_the_local_status_as_json(registered, tmp_path):
    config = registered()
    res = run_agent("status", "--state-dir", str(config.state_dir), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["host_id"] == "host-1" and info["machine_id"] == config.machine_id
    assert info["active_partition"] == "USR-A" and info["version"] == "1.0.0"
    assert info["simulated"] is True and len(info["boot_id"]) == 36
    assert info["update_conf"] == {"GROUP": "stable", "SERVER": "https://example", "REBOOT_STRATEGY": None}
    assert info["policy_revision"] is None
    assert [(p["label"], p["priority"], p["successful"]) for p in info["partitions"]] == \
           [("USR-A", 1, True), ("USR-B", 0, False)]
    text = run_agent("status", "--state-dir", str(config.state_dir))
    assert "USR-A" in text.stdout and "host-1" in text.stdout
