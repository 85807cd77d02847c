"""The update engine end to end: ``agent run`` subprocesses, an in-test websockets server and an
in-test HTTP payload server (Range, cuts, throttling) on 127.0.0.1, real disk images and payloads."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent import config as cfg
from agent import disk as gptdisk
from agent import protocol, signing, updater
from agent.connection import Backoff
from imagebuilder import disk as builder

from .conftest import AGENT, read_json, sparse_copy
from .test_run import FakeServer, policy

MIB = 1024 * 1024
PAYLOAD_MIB = 8


# -- payloads, keys, servers -------------------------------------------------------------------

@pytest.fixture(scope="session")
def payloads(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("payloads")
    out = {}
    for version in ("2.0.0", "0.9.0"):
        out[version] = builder.build_payload(d / f"{version}.img", version, size_mib=PAYLOAD_MIB)
    # installs fine, but holds no /share/coreos/release: the boot health check fails
    path = builder.make_ext_image(None, d / "norelease.img", PAYLOAD_MIB * MIB, label="USR", fs_type="ext2")
    out["norelease"] = {"path": str(path), "version": "2.0.0", "size": path.stat().st_size,
                        "sha256": builder.file_sha256(path)}
    return out


@pytest.fixture(scope="session")
def keypair():
    return signing.generate()


class PayloadServer:
    """Serves files with Range support; can cut the next response after N bytes, hold every
    response after N bytes until ``release`` is set (a download that stalls where the test wants),
    fail the next requests (``fail``: "reset" closes the connection unanswered, "503" answers HTTP
    503, ...) or go down (connections refused) and come back up on the same port."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        self.fail: list[str] = []
        self.on_request = None
        self.hold_after: int | None = None
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                if outer.on_request is not None:
                    outer.on_request()
                if outer.fail:
                    mode = outer.fail.pop(0)
                    if mode == "reset":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                    else:
                        self.send_error(int(mode))
                    return
                name = self.path.lstrip("/")
                if name not in outer.files:
                    self.send_error(404, "no such payload")
                    return
                data = Path(outer.files[name]).read_bytes()
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m:
                    start = int(m.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                cut, outer.cut_after = outer.cut_after, None
                pos = start
                while pos < len(data):
                    end = min(len(data), pos + 64 * 1024)
                    if cut is not None and end - start >= cut:
                        self.wfile.write(data[pos:start + cut])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if outer.hold_after is not None and end - start > outer.hold_after:
                        outer.release.wait()
                    try:
                        self.wfile.write(data[pos:end])
                    except OSError:
                        return
                    pos = end

        self.handler = Handler
        self.httpd: ThreadingHTTPServer | None = None
        self.up(0)
        self.base = f"http://127.0.0.1:{self.port}"

    def up(self, port: int | None = None):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port if port is None else port), self.handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def down(self):
        """The web process is gone: connections are refused until ``up()``."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd = None

    def close(self):
        self.release.set()
        if self.httpd is not None:
            self.down()


@pytest.fixture
def payload_server(payloads):
    srv = PayloadServer({name: info["path"] for name, info in payloads.items()})
    yield srv
    srv.close()


@pytest.fixture
def ws_server():
    servers = []

    def make(script):
        servers.append(FakeServer(script))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def key_policy(revision, strategy, keypair, **extra):
    return policy(revision, "stable", strategy, signing_key=keypair[1], signing_key_id=signing.key_id(keypair[1]),
                  **extra)


def update_frame(info, url, keypair, *, rollout=5, version=None, size=None, sha256=None, **extra):
    version = version or info["version"]
    size = info["size"] if size is None else size
    sha256 = sha256 or info["sha256"]
    return protocol.encode("update", "server", version=version, url=url, size=size, sha256=sha256,
                           signature=signing.sign(keypair[0], version, size, sha256), rollout=rollout, **extra)


def until(srv, ws, kind, pred=lambda f: True, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        frame = srv.recv(ws, timeout=max(0.1, deadline - time.monotonic()))
        if frame["type"] == kind and pred(frame):
            return frame


def event(srv, ws, name, timeout=120):
    return until(srv, ws, "event", lambda f: f["kind"] == name, timeout)


def status(srv, ws, name, timeout=120):
    return until(srv, ws, "status", lambda f: f["update_status"] == name, timeout)


def start_agent(config, env: dict | None = None):
    return subprocess.Popen([*AGENT, "run", "--state-dir", str(config.state_dir)], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, cfg.HEARTBEAT_ENV: "30", **(env or {})})


def stop_agent(proc) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def vector(disk, label):
    p = gptdisk.read_gpt(disk).get(label)
    return (p.priority, p.tries, int(p.successful))


def region_sha(disk, label=None) -> str:
    """sha256 of a partition's bytes, or (label None) of both GPT copies + the MBR."""
    table = gptdisk.read_gpt(disk)
    data = Path(disk).read_bytes()
    if label is None:
        head = data[:table.first_usable * 512]
        tail = data[(table.last_usable + 1) * 512:]
        return hashlib.sha256(head + tail).hexdigest()
    p = table.get(label)
    return hashlib.sha256(data[p.offset():p.offset() + p.size()]).hexdigest()


def frames(srv, i, kind):
    return [f for f in srv.connections[i]["frames"] if f["type"] == kind]


def wait_for(flag: threading.Event, proc, what: str, timeout=300):
    if not flag.wait(timeout):
        err = stop_agent(proc)
        raise AssertionError(f"{what} did not happen; agent log:\n{err[-4000:]}")


# -- the happy path --------------------------------------------------------------------------

def test_it_installs_resumes_after_a_cut_reboots_and_marks_the_new_partition_good(
        ws_server, payload_server, payloads, keypair, registered):
    info = payloads["2.0.0"]
    payload_server.cut_after = 3 * MIB + 12345        # the first response breaks off: resume with Range
    done = threading.Event()

    def script(srv, ws, i):
        if i == 0:
            srv.hello0 = srv.recv(ws, "hello")
            ws.send(key_policy(1, "reboot", keypair))
            srv.pinned = event(srv, ws, "signing_key_pinned")
            ws.send(update_frame(info, f"{payload_server.base}/2.0.0", keypair, rollout=5))
            srv.installed = event(srv, ws, "update_installed")
            srv.rebooting = event(srv, ws, "rebooting")
        else:
            srv.hello1 = srv.recv(ws, "hello")
            ws.send(key_policy(1, "reboot", keypair))
            # the partition marked good is reported before the outcome, so whoever reads the outcome finds it
            srv.after = until(srv, ws, "status", lambda f: any(
                p["label"] == "USR-B" and p["active"] and p["successful"] for p in f.get("partitions") or ()))
            srv.booted = event(srv, ws, "booted_new_version")
            done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    disk = config.disk
    proc = start_agent(config)
    try:
        wait_for(done, proc, "install, reboot and mark good")
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])
    # closing the socket for the reboot and for the stop is expected: no traceback in the log
    assert "Traceback" not in err and "never retrieved" not in err, err[-3000:]

    # every state reported, in order, with the rollout and target version
    statuses = frames(srv, 0, "status")
    seen = [s["update_status"] for s in statuses if s["update_status"] != "IDLE"]
    order = ["CHECKING_FOR_UPDATE", "UPDATE_AVAILABLE", "DOWNLOADING", "VERIFYING", "FINALIZING",
             "UPDATED_NEED_REBOOT"]
    assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == order
    for s in statuses:
        if s["update_status"] != "IDLE":
            assert s["rollout"] == 5 and s["target_version"] == "2.0.0"
    progress = [s["progress"] for s in statuses if s["update_status"] == "DOWNLOADING"]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress) and len(progress) >= 5

    # resumed with Range exactly where the cut left the file
    assert payload_server.requests[0] == ("/2.0.0", None)
    assert payload_server.requests[1] == ("/2.0.0", f"bytes={3 * MIB + 12345}-")

    assert srv.pinned["data"] == {"key_id": signing.key_id(keypair[1])}
    assert srv.installed["data"] == {"version": "2.0.0", "partition": "USR-B", "rollout": 5}
    assert srv.rebooting["data"]["rollout"] == 5 and srv.rebooting["data"]["strategy"] == "reboot"
    assert srv.hello1["boot_id"] != srv.hello0["boot_id"]
    assert srv.hello1["version"] == "2.0.0"
    assert [p["label"] for p in srv.hello1["partitions"] if p["active"]] == ["USR-B"]
    assert srv.booted["data"] == {"version": "2.0.0", "previous_version": "1.0.0", "rollout": 5,
                                  "partition": "USR-B"}
    assert srv.after["update_status"] == "IDLE" and srv.after["version"] == "2.0.0"

    # DESIGN §4: after a good boot the new partition is successful, tries 0, highest priority
    assert vector(disk, "USR-B") == (2, 0, 1)
    assert vector(disk, "USR-A") == (1, 0, 1)
    assert gptdisk.read_release(disk, "USR-B")["COREOS_RELEASE_VERSION"] == "2.0.0"
    assert not (config.state_dir / "pending-update.json").exists()
    assert not list((config.state_dir / "downloads").iterdir())
    assert read_json(config.state_dir / "signing-key.json")["public_key"] == keypair[1]


# -- refusals: nothing downloaded or written ---------------------------------------------------

def test_it_refuses_bad_updates_before_touching_the_disk_and_follows_only_endorsed_key_rotations(
        ws_server, payload_server, payloads, keypair, registered):
    info, old = payloads["2.0.0"], payloads["0.9.0"]
    other = signing.generate()
    base = payload_server.base
    done = threading.Event()
    results = {}

    def error_after(srv, ws, frame_text):
        ws.send(frame_text)
        ev = event(srv, ws, "update_error")
        status(srv, ws, "IDLE")
        return ev

    def script(srv, ws, i):
        srv.recv(ws, "hello")
        ws.send(key_policy(1, "off", keypair))
        event(srv, ws, "signing_key_pinned")
        results["before"] = (region_sha(srv.disk), region_sha(srv.disk, "USR-B"))
        results["bad_sig"] = error_after(srv, ws, update_frame(info, f"{base}/2.0.0", other))
        results["requests_after_bad_sig"] = list(payload_server.requests)
        results["downgrade"] = error_after(srv, ws, update_frame(old, f"{base}/0.9.0", keypair))
        ws.send(update_frame(payloads["2.0.0"], f"{base}/1.0.0", keypair, version="1.0.0"))
        results["current"] = event(srv, ws, "already_current")
        results["too_large"] = error_after(srv, ws, update_frame(info, f"{base}/2.0.0", keypair,
                                                                 size=40 * MIB))
        results["hash"] = error_after(srv, ws, update_frame(info, f"{base}/0.9.0", keypair))
        results["missing"] = error_after(srv, ws, update_frame(info, f"{base}/nope", keypair))
        results["after"] = (region_sha(srv.disk), region_sha(srv.disk, "USR-B"))
        results["requests"] = list(payload_server.requests)
        # a different key without an endorsement: refused, the pin stays
        ws.send(key_policy(2, "off", other))
        results["mismatch"] = event(srv, ws, "update_error")
        results["still_refused"] = error_after(srv, ws, update_frame(info, f"{base}/2.0.0", other))
        # endorsed by the pinned key: followed
        ws.send(key_policy(3, "off", other, signing_key_endorsement=signing.endorse(keypair[0], other[1])))
        results["rotated"] = event(srv, ws, "signing_key_rotated")
        # an explicit downgrade, signed with the new key, installs; strategy off waits for a reboot
        ws.send(update_frame(old, f"{base}/0.9.0", other, rollout=9, allow_downgrade=True))
        results["installed"] = event(srv, ws, "update_installed")
        results["needed"] = event(srv, ws, "reboot_needed")
        done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    srv.disk = config.disk
    proc = start_agent(config)
    try:
        wait_for(done, proc, "the refusal sequence")
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])

    def code(name):
        return results[name]["data"]["code"]

    assert code("bad_sig") == "bad_signature" and results["requests_after_bad_sig"] == []
    assert results["bad_sig"]["data"]["rollout"] == 5 and results["bad_sig"]["data"]["version"] == "2.0.0"
    assert code("downgrade") == "downgrade_refused"
    assert results["current"]["data"] == {"version": "1.0.0", "rollout": 5}
    assert code("too_large") == "too_large" and "imagebuilder payload --size-mib 32" in \
        results["too_large"]["data"]["message"]
    assert code("hash") == "hash_mismatch"
    assert code("missing") == "download_failed" and "HTTP 404" in results["missing"]["data"]["message"]
    # only the hash-mismatch and the 404 downloads reached the payload server
    assert [r[0] for r in results["requests"]] == ["/0.9.0", "/nope"]
    assert results["after"] == results["before"], "the GPT or USR-B changed before verification"
    assert not list((config.state_dir / "downloads").glob("*.part"))
    assert code("mismatch") == "signing_key_mismatch"
    assert code("still_refused") == "bad_signature"
    assert results["rotated"]["data"] == {"key_id": signing.key_id(other[1]),
                                          "previous_key_id": signing.key_id(keypair[1])}
    assert results["installed"]["data"] == {"version": "0.9.0", "partition": "USR-B", "rollout": 9}
    assert results["needed"]["data"]["strategy"] == "off"
    # DESIGN §4 vector right after install: new 2/1/0, old 1/0/1; nothing rebooted
    assert vector(config.disk, "USR-B") == (2, 1, 0)
    assert vector(config.disk, "USR-A") == (1, 0, 1)
    pending = read_json(config.state_dir / "pending-update.json")
    assert pending["version"] == "0.9.0" and pending["label"] == "USR-B" and pending["previous_version"] == "1.0.0"
    assert read_json(config.state_dir / "signing-key.json")["public_key"] == other[1]


# -- outages: a broken download is retried until the update's deadline (issue 10) --------------

def quick_backoff():
    return Backoff(initial=0.01, cap=0.05)


def test_a_download_keeps_retrying_through_an_outage_and_resumes_with_range(payload_server, payloads, tmp_path):
    """Cut mid-body, then the server is down (refused) and comes back answering 503/502 and dropping
    connections: eight failures in a row, more than the five tries the agent used to allow, then done."""
    info = payloads["2.0.0"]
    payload_server.cut_after = 2 * MIB + 777
    retries: list[updater.Retry] = []

    def on_retry(retry):
        retries.append(retry)
        if len(retries) == 1:
            payload_server.down()
        elif len(retries) == 4:                 # three attempts refused
            payload_server.fail = ["503", "reset", "502", "reset"]
            payload_server.up()

    dest = tmp_path / "dl.part"
    updater.download(f"{payload_server.base}/2.0.0", dest, info["size"], backoff=quick_backoff(),
                     deadline=time.monotonic() + 3600, on_retry=on_retry)
    assert builder.file_sha256(dest) == info["sha256"]
    assert [r.streak for r in retries] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(0 < r.delay <= 0.05 and 3500 < r.left <= 3600 for r in retries)
    assert "refused" in retries[1].error.lower() and "503" in retries[4].error
    ranges = [r for _, r in payload_server.requests]
    assert ranges[0] is None and set(ranges[1:]) == {f"bytes={2 * MIB + 777}-"} and len(ranges) == 1 + 4 + 1


def test_a_broken_download_gives_up_at_the_deadline_not_after_five_tries(payload_server, payloads, tmp_path):
    """A fake clock: every attempt costs 10 s of it, the deadline is 95 s away."""
    info = payloads["2.0.0"]
    clock = {"now": 1000.0}

    def tick():
        clock["now"] += 10

    payload_server.on_request = tick
    payload_server.fail = ["503"] * 100
    retries = []
    with pytest.raises(updater.UpdateError) as exc:
        updater.download(f"{payload_server.base}/2.0.0", tmp_path / "dl.part", info["size"],
                         backoff=quick_backoff(), deadline=1095.0, clock=lambda: clock["now"],
                         on_retry=retries.append)
    assert exc.value.code == "download_failed" and "deadline" in exc.value.message
    assert len(payload_server.requests) == 10 and len(retries) == 9       # the 10th attempt ended past it
    assert [round(r.left) for r in retries] == [85, 75, 65, 55, 45, 35, 25, 15, 5]


@pytest.mark.parametrize("code", [404, 403, 410])
def test_an_error_retrying_cannot_fix_fails_the_download_at_once(payload_server, payloads, tmp_path, code):
    payload_server.fail = [str(code)] * 10
    with pytest.raises(updater.UpdateError) as exc:
        updater.download(f"{payload_server.base}/2.0.0", tmp_path / "dl.part", payloads["2.0.0"]["size"],
                         backoff=quick_backoff(), deadline=time.monotonic() + 3600)
    assert exc.value.code == "download_failed" and f"HTTP {code}" in exc.value.message
    assert len(payload_server.requests) == 1


def test_an_agent_downloads_through_a_server_outage_and_says_it_is_retrying(
        ws_server, payload_server, payloads, keypair, registered):
    """The agent as a process (its backoff shortened by FLEET_AGENT_DOWNLOAD_BACKOFF): a cut, then seven
    failed attempts; it reports the break once, keeps DOWNLOADING and installs."""
    info = payloads["2.0.0"]
    payload_server.cut_after = 3 * MIB
    done = threading.Event()

    def after_cut():                              # the first response is cut; then seven failures
        if len(payload_server.requests) == 2:
            payload_server.fail = ["reset", "503", "reset", "502", "503", "reset", "503"]

    payload_server.on_request = after_cut

    def script(srv, ws, i):
        srv.recv(ws, "hello")
        ws.send(key_policy(1, "off", keypair))
        event(srv, ws, "signing_key_pinned")
        ws.send(update_frame(info, f"{payload_server.base}/2.0.0", keypair, rollout=5, timeout=600))
        srv.retrying = event(srv, ws, "download_retrying")
        srv.outcome = until(srv, ws, "event", lambda f: f["kind"] in ("update_installed", "update_error"), 90)
        done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    proc = start_agent(config, {updater.DOWNLOAD_BACKOFF_ENV: "0.05,0.2"})
    try:
        wait_for(done, proc, "the download through the outage", timeout=120)
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])
    assert srv.outcome["kind"] == "update_installed", srv.outcome
    data = srv.retrying["data"]
    assert data["version"] == "2.0.0" and data["rollout"] == 5 and 0 < data["gives_up_in"] <= 600
    assert "retrying" in srv.retrying["message"]
    assert [f["kind"] for f in frames(srv, 0, "event")].count("download_retrying") == 1   # once per break
    ranges = [r for _, r in payload_server.requests]
    assert len(ranges) == 1 + 7 + 1 and ranges[-1] == f"bytes={3 * MIB}-"
    assert vector(config.disk, "USR-B") == (2, 1, 0)


# -- a killed agent ---------------------------------------------------------------------------

def test_an_agent_killed_mid_download_resumes_after_a_restart_and_never_boots_a_partial_partition(
        ws_server, payload_server, payloads, keypair, registered):
    info = payloads["2.0.0"]
    payload_server.hold_after = 3 * MIB               # the download stalls there until the kill
    midway, done = threading.Event(), threading.Event()

    def script(srv, ws, i):
        srv.recv(ws, "hello")
        ws.send(key_policy(1, "off", keypair))
        event(srv, ws, "policy_applied")
        ws.send(update_frame(info, f"{payload_server.base}/2.0.0", keypair))
        if i == 0:
            until(srv, ws, "status", lambda f: f["update_status"] == "DOWNLOADING" and f.get("progress", 0) >= 0.2)
            midway.set()
        else:
            srv.installed = event(srv, ws, "update_installed")
            done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    disk = config.disk
    gpt_before = region_sha(disk)
    proc = start_agent(config)
    try:
        wait_for(midway, proc, "the download")
    finally:
        proc.kill()
        proc.wait(60)
    part = config.state_dir / "downloads" / f"{info['sha256']}.part"
    have = part.stat().st_size
    assert 0 < have < info["size"]
    assert region_sha(disk) == gpt_before
    assert vector(disk, "USR-B") == (0, 0, 0)
    scratch = sparse_copy(Path(disk), Path(disk).with_name("boot-check.img"))
    assert gptdisk.boot_choice(scratch).label == "USR-A"       # a boot now would never pick USR-B

    payload_server.hold_after = None
    payload_server.release.set()
    proc = start_agent(config)
    try:
        wait_for(done, proc, "the resumed install")
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])
    ranges = [r for _, r in payload_server.requests]
    assert ranges[0] is None and ranges[-1] is not None
    assert int(ranges[-1][len("bytes="):-1]) >= have            # continued from the partial file
    assert "resuming the download of 2.0.0 at byte" in err
    assert vector(disk, "USR-B") == (2, 1, 0)


def test_a_write_that_dies_midway_leaves_a_partition_gptprio_never_boots(payloads, disk_image, tmp_path):
    from agent.host import Host

    disk = str(disk_image)
    # make USR-B an old known-good partition first (the usual state one update later)
    gptdisk.modify(disk, gptdisk.mark_good, "USR-B")
    gptdisk.modify(disk, gptdisk.prioritize, "USR-A")
    assert vector(disk, "USR-B") == (2, 0, 1) and vector(disk, "USR-A") == (3, 0, 1)
    info = payloads["2.0.0"]
    engine = updater.UpdateEngine(Host(disk=disk, state_dir=tmp_path / "state"), tmp_path / "state", None, None)
    target = gptdisk.read_gpt(disk).get("USR-B")
    real = updater.write_partition

    class Died(BaseException):
        pass

    def dying(*args, **kwargs):
        def after(n):
            if n >= 3 * MIB:
                raise Died()
        return real(*args, **kwargs, after_chunk=after)

    updater.write_partition = dying
    try:
        offer = updater.Offer(version="2.0.0", url="", size=info["size"], sha256=info["sha256"], signature="")
        with pytest.raises(Died):
            engine._install(Path(info["path"]), offer, target)
    finally:
        updater.write_partition = real
    assert vector(disk, "USR-B") == (0, 0, 0)
    for _ in range(3):
        assert gptdisk.boot_choice(disk).label == "USR-A"


# -- a release that does not come up ---------------------------------------------------------

def test_a_payload_without_a_release_file_installs_fails_the_health_check_and_rolls_back(
        ws_server, payload_server, payloads, keypair, registered):
    info = payloads["norelease"]
    done = threading.Event()

    def script(srv, ws, i):
        hello = srv.recv(ws, "hello")
        ws.send(key_policy(1, "reboot", keypair))
        if i == 0:
            ws.send(update_frame(info, f"{payload_server.base}/norelease", keypair, rollout=7))
            event(srv, ws, "update_installed")
            event(srv, ws, "rebooting")
        elif i == 1:
            srv.bad_hello = hello
            srv.unhealthy = event(srv, ws, "health_check_failed")
        else:
            srv.back_hello = hello
            srv.rollback = event(srv, ws, "rollback")
            done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    proc = start_agent(config)
    try:
        wait_for(done, proc, "the rollback")
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])
    assert srv.bad_hello["version"] is None
    assert [p["label"] for p in srv.bad_hello["partitions"] if p["active"]] == ["USR-B"]
    assert "no readable /share/coreos/release" in srv.unhealthy["data"]["reason"]
    assert srv.back_hello["version"] == "1.0.0"
    assert [p["label"] for p in srv.back_hello["partitions"] if p["active"]] == ["USR-A"]
    data = srv.rollback["data"]
    assert data["failed_version"] == "2.0.0" and data["version"] == "1.0.0" and data["rollout"] == 7
    assert "no readable /share/coreos/release" in data["reason"]
    # the failed partition: tries used up, never successful; USR-A is good and keeps running
    assert vector(config.disk, "USR-B") == (2, 0, 0)
    assert vector(config.disk, "USR-A") == (1, 0, 1)
    assert gptdisk.boot_choice(config.disk).label == "USR-A"
    assert not (config.state_dir / "pending-update.json").exists()
