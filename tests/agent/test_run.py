"""``agent run`` against a tiny in-test websockets server on 127.0.0.1 (the real server is tested elsewhere)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from agent import apply as cloudapply
from agent import config as cfg
from agent import protocol

from .conftest import AGENT, free_port, read_json, run_agent


class FakeServer:
    """Runs ``script(server, ws, index)`` for each agent connection and records what the agent sent."""

    def __init__(self, script, reject_http: int | None = None):
        self.script = script
        self.reject_http = reject_http
        self.connections: list[dict] = []
        self.events: dict[str, threading.Event] = {}
        self.errors: list[BaseException] = []
        self._server = serve(self._handler, "127.0.0.1", 0, process_request=self._process_request)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/ws/agent/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def _process_request(self, ws, request):
        if self.reject_http:
            return ws.respond(self.reject_http, "credential not accepted\n")
        return None

    def _handler(self, ws):
        conn = {"auth": ws.request.headers.get("Authorization"), "frames": [], "close_code": None}
        self.connections.append(conn)
        conn["ws"] = ws
        try:
            self.script(self, ws, len(self.connections) - 1)
            while True:                                     # wait for the agent to close
                self.recv(ws)
        except ConnectionClosed as exc:
            conn["close_code"] = exc.rcvd.code if exc.rcvd else None
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def recv(self, ws, kind: str | None = None, timeout: float = 120) -> dict:
        conn = next(c for c in self.connections if c.get("ws") is ws)
        while True:
            frame = protocol.decode(ws.recv(timeout=timeout), "agent")
            conn["frames"].append(frame)
            if kind is None or frame["type"] == kind:
                return frame

    def close(self):
        self._server.shutdown()
        self._thread.join(30)


def policy(revision: int, channel: str, strategy: str, **extra) -> str:
    return protocol.encode("policy", "server", revision=revision, group="web", channel=channel,
                           reboot_strategy=strategy, **extra)


@pytest.fixture
def fake_server():
    servers = []

    def make(script, **kw):
        servers.append(FakeServer(script, **kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def test_it_applies_the_policy_acks_it_and_sends_a_status_with_once(fake_server, registered):
    def script(srv, ws, i):
        srv.hello = srv.recv(ws, "hello")
        ws.send(policy(7, "beta", "etcd-lock", reboot_window_start="Sat 04:00", reboot_window_length="1h"))
        srv.ack = srv.recv(ws, "event")
        srv.status = srv.recv(ws, "status")

    srv = fake_server(script)
    config = registered(srv.url)
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_OK, res.stderr
    assert not srv.errors
    conn = srv.connections[0]
    assert conn["auth"] == "Bearer secret-credential"
    hello = srv.hello
    assert hello["machine_id"] == config.machine_id and hello["hostname"] == "node-1"
    assert hello["version"] == "1.0.0" and hello["group"] == "stable" and hello["update_status"] == "IDLE"
    assert "policy_revision" not in hello
    assert [p["label"] for p in hello["partitions"]] == ["USR-A", "USR-B"]
    assert srv.ack == {"type": "event", "kind": "policy_applied",
                       "data": {"revision": 7, "channel": "beta", "reboot_strategy": "etcd-lock", "group": "web"}}
    assert srv.status["update_status"] == "IDLE" and srv.status["version"] == "1.0.0"
    assert conn["close_code"] == 1000
    update_conf = (config.host().update_conf_path).read_text()
    assert update_conf == "# managed by fleet\nGROUP=beta\nSERVER=https://example\nREBOOT_STRATEGY=etcd-lock\n"
    assert read_json(config.state_dir / "state.json")["policy_revision"] == 7
    for line in ("CONNECTING", "HANDSHAKING", "READY", "applied policy revision 7"):
        assert line in res.stderr

    # the next hello tells the server which revision is applied, and the group now read from update.conf
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_OK, res.stderr
    assert srv.hello["policy_revision"] == 7 and srv.hello["group"] == "beta"
    assert srv.hello["reboot_strategy"] == "etcd-lock"


def test_it_exits_unauthorized_with_once_when_the_server_closes_4401(fake_server, registered):
    def script(srv, ws, i):
        srv.recv(ws, "hello")
        ws.close(protocol.CLOSE_UNAUTHORIZED, "unknown credential")

    config = registered(fake_server(script).url)
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_UNAUTHORIZED, res.stderr
    assert "agent: error:" in res.stderr and "Traceback" not in res.stderr


def test_it_exits_unauthorized_with_once_when_the_handshake_gets_401(fake_server, registered):
    config = registered(fake_server(lambda *a: None, reject_http=401).url)
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_UNAUTHORIZED, res.stderr
    assert "HTTP 401" in res.stderr


def test_it_exits_server_unreachable_with_once_for_a_closed_port(registered):
    config = registered(f"ws://127.0.0.1:{free_port()}/ws/agent/")
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_SERVER_UNREACHABLE
    assert "agent: error: cannot talk to the server" in res.stderr


def test_it_heartbeats_switches_channel_live_reboots_and_stops_cleanly_on_sigterm(fake_server, registered):
    def script(srv, ws, i):
        if i == 0:
            srv.first_hello = srv.recv(ws, "hello")
            ws.send(policy(1, "stable", "reboot", heartbeat_interval=30))
            srv.recv(ws, "event")
            srv.recv(ws, "status")
            srv.recv(ws, "status")                         # a heartbeat (FLEET_AGENT_HEARTBEAT wins)
            ws.send(protocol.encode("ping", "server", nonce="n-1"))
            srv.pong = srv.recv(ws, "pong")
            ws.send('{"type": "bogus"}')                     # ignored, logged
            ws.send(protocol.error_frame("invalid", "just testing"))
            ws.send(policy(2, "alpha", "off"))               # the live channel switch
            srv.switch_ack = srv.recv(ws, "event")
            srv.switched_conf = srv.conf_path.read_text()
            ws.send(protocol.encode("command", "server", command="rollback", id="c-1"))
            srv.unsupported = srv.recv(ws, "event")
            ws.send(protocol.encode("command", "server", command="check-update", id="c-2"))
            srv.recv(ws, "status")
            ws.send(protocol.encode("command", "server", command="reboot", id="c-3"))
            srv.rebooting = srv.recv(ws, "event")
        else:
            srv.second_hello = srv.recv(ws, "hello")
            ws.send(policy(2, "alpha", "off"))
            srv.recv(ws, "event")
            srv.recv(ws, "status")
            srv.event("ready-again").set()

    srv = fake_server(script)
    config = registered(srv.url)
    srv.conf_path = config.host().update_conf_path
    proc = subprocess.Popen([*AGENT, "run", "--state-dir", str(config.state_dir)], stderr=subprocess.PIPE,
                            text=True, env={**__import__("os").environ, cfg.HEARTBEAT_ENV: "0.2"})
    try:
        assert srv.event("ready-again").wait(120), "the agent did not come back after the simulated reboot"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == cfg.EXIT_OK, stderr
    assert not srv.errors, srv.errors
    assert srv.pong == {"type": "pong", "nonce": "n-1"}
    assert srv.switch_ack["data"] == {"revision": 2, "channel": "alpha", "reboot_strategy": "off", "group": "web"}
    assert "GROUP=alpha\n" in srv.switched_conf and "REBOOT_STRATEGY=off\n" in srv.switched_conf
    # USR-B holds nothing good yet: the rollback is refused, nothing changes
    assert srv.unsupported["kind"] == "update_error" and srv.unsupported["data"]["id"] == "c-1"
    assert srv.unsupported["data"]["code"] == "rollback_unavailable"
    assert srv.rebooting["kind"] == "rebooting"
    assert srv.second_hello["boot_id"] != srv.first_hello["boot_id"]
    assert srv.second_hello["policy_revision"] == 2 and srv.second_hello["group"] == "alpha"
    assert srv.second_hello["version"] == "1.0.0"
    assert [c["close_code"] for c in srv.connections] == [1000, 1000]
    assert "unknown message type 'bogus'" in stderr and "just testing" in stderr
    assert "received SIGTERM" in stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_status_reports_the_cloud_config_revision_last_synced(fake_server, registered):
    """The server resends the policy to an agent whose cloud-config revision is behind (a lost push)."""
    def script(srv, ws, i):
        srv.recv(ws, "hello")
        ws.send(policy(3, "stable", "reboot"))
        srv.status = srv.recv(ws, "status")

    srv = fake_server(script)
    config = registered(srv.url)
    cloudapply.save_state(config.state_dir, {"seen": 12, "revision": 12})
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_OK, res.stderr
    assert srv.status["cloud_config_revision"] == 12 and srv.status["policy_revision"] == 3


def test_a_status_reports_the_etcd_credentials_revision_applied_never_the_password(fake_server, registered):
    """The server resends the host's policy to an agent still on older etcd credentials (a rotation
    whose push was lost): the status says which revision it applied, and nothing secret."""
    def script(srv, ws, i):
        srv.recv(ws, "hello")
        ws.send(policy(3, "stable", "reboot", etcd_username="host-web-1", etcd_password="s3cret-pw",
                       etcd_credentials_revision=4))
        srv.status = srv.recv(ws, "status")

    srv = fake_server(script)
    config = registered(srv.url)
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_OK, res.stderr
    assert srv.status["etcd_credentials_revision"] == 4 and srv.status["policy_revision"] == 3
    assert "s3cret-pw" not in json.dumps(srv.status)


def test_a_busy_server_closing_1013_is_retried_after_the_backoff(fake_server, registered):
    def script(srv, ws, i):
        srv.recv(ws, "hello")
        if i == 0:
            ws.close(protocol.CLOSE_TRY_AGAIN_LATER, "try again later")
            return
        ws.send(policy(1, "stable", "reboot"))
        srv.recv(ws, "status")

    srv = fake_server(script)
    config = registered(srv.url)
    res = run_agent("run", "--once", "--state-dir", str(config.state_dir))
    assert res.returncode == cfg.EXIT_OK, res.stderr
    assert len(srv.connections) == 2 and not srv.errors
    assert "server busy (1013, try again later); reconnecting after the backoff" in res.stderr
