"""The real stack for end-to-end tests: uvicorn (ASGI) on a loopback port with the Redis channel
layer, the test database, and real `agent` processes on disk images from `imagebuilder disk`.

Everything started here binds to 127.0.0.1 on a free port and is stopped by its PID.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=60.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # still starting
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen, timeout=10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or "postgres"
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture(scope="session")
def template_disk(tmp_path_factory) -> Path:
    """One disk image per session (copied per agent: building is the slow part)."""
    path = tmp_path_factory.mktemp("disk") / "template.img"
    subprocess.run([BIN / "imagebuilder", "disk", "--output", str(path), "--version", "100.0.0"],
                   check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    return path


@dataclass
class AgentProc:
    name: str
    dir: Path
    server: str
    token: str
    env: dict
    host_id: str | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    def update_conf(self) -> str:
        return (self.root / "etc/coreos/update.conf").read_text()

    def register(self, token: str | None = None, *extra: str) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [BIN / "agent", "register", "--server", self.server, "--token", token or self.token,
             "--state-dir", str(self.state_dir), "--disk", str(self.disk), "--root", str(self.root),
             "--machine-id", uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex, "--hostname", self.name, *extra],
            capture_output=True, text=True, env=self.env, timeout=120)
        if res.returncode == 0:
            self.host_id = json.loads((self.state_dir / "agent.json").read_text())["host_id"]
        return res

    def start(self, *extra: str) -> "AgentProc":
        self.log = self.dir / "agent.log"
        self.proc = subprocess.Popen([BIN / "agent", "run", "--state-dir", str(self.state_dir), *extra],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def output(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""


@dataclass
class Stack:
    url: str
    bootstrap: dict
    login: tuple[str, str]
    api: httpx.Client
    workdir: Path
    template_disk: Path
    env: dict
    server: subprocess.Popen
    agents: list[AgentProc] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        """A real Celery worker (solo pool) plus nothing else: tests call beat's task themselves
        or rely on event-driven waves."""
        proc = subprocess.Popen(
            [BIN / "celery", "-A", "fleetweb", "worker", "--pool", "solo", "-l", "info", "-n", f"{name}@%h",
             "-Q", self.env["CELERY_TASK_DEFAULT_QUEUE"]],
            cwd=ROOT, env=self.env, stdout=open(self.workdir / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.workers.append(proc)
        return proc

    def start_beat(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [BIN / "celery", "-A", "fleetweb", "beat", "-l", "info", "--schedule", str(self.workdir / "beat")],
            cwd=ROOT, env=self.env, stdout=open(self.workdir / "beat.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.workers.append(proc)
        return proc

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws/agent/"

    def new_agent(self, name: str, token: str | None = None, server: str | None = None) -> AgentProc:
        """An agent on a copy of the template disk, registered with SERVER (default: the stack's URL)."""
        d = self.workdir / name
        (d / "root/etc/coreos").mkdir(parents=True)
        (d / "root/etc/coreos/update.conf").write_text("# demo host\nGROUP=stable\nREBOOT_STRATEGY=best-effort\n")
        shutil.copyfile(self.template_disk, d / "disk.img")
        agent = AgentProc(name=name, dir=d, server=server or self.url, token=token or self.bootstrap["enrollment_token"],
                          env={**os.environ, "FLEET_AGENT_HEARTBEAT": "1"})
        self.agents.append(agent)
        return agent

    def spawn_agent(self, name: str, token: str | None = None, server: str | None = None) -> AgentProc:
        agent = self.new_agent(name, token, server)
        res = agent.register()
        assert res.returncode == 0, f"agent register failed ({res.returncode}): {res.stderr}"
        return agent.start()

    def host(self, host_id: str) -> dict:
        r = self.api.get(f"/api/v1/hosts/{host_id}/")
        r.raise_for_status()
        return r.json()

    def server_log(self) -> str:
        return (self.workdir / "server.log").read_text()


def stack_env(url: str, workdir: Path, redis_url: str = REDIS_URL) -> dict:
    """The environment every process of a stack shares (web, worker, beat): short heartbeats, its
    own Redis key prefix and Celery queue, media under WORKDIR."""
    return {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": redis_url,
            "FLEET_REDIS_PREFIX": f"fleet-test-{uuid.uuid4().hex[:8]}", "FLEET_PUBLIC_URL": url,
            # beat's reaper marks a host offline after FLEET_OFFLINE_AFTER without a heartbeat: 5 s was
            # shorter than a busy host's stalls; no test waits for the reaper (a disconnect is at once)
            "FLEET_HEARTBEAT_INTERVAL": "1", "FLEET_OFFLINE_AFTER": "60", "DJANGO_SETTINGS_MODULE": "fleetweb.settings",
            "PYTHONUNBUFFERED": "1", "FLEET_MEDIA_ROOT": str(workdir / "media"),
            "CELERY_TASK_DEFAULT_QUEUE": f"fleet-test-{uuid.uuid4().hex[:8]}"}


def bootstrap_org() -> dict:
    """Organization Acme, admin alice, group web (the test database, through the real command)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("bootstrap", org="Acme", user="alice", password=PASSWORD, group="web", json=True,
                 stdout=out)
    return json.loads(out.getvalue())


def start_web(env: dict, port: int, log: Path) -> subprocess.Popen:
    """uvicorn serving fleetweb.asgi:application on 127.0.0.1:PORT, once /healthz answers."""
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [BIN / "uvicorn", "fleetweb.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--ws-max-size", "1048576", *([] if os.environ.get("FLEET_TEST_ACCESS_LOG") else ["--no-access-log"])],
        cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 what=f"the ASGI server on {url} (log: {log})")
    except BaseException:
        stop_process(proc)
        raise
    return proc


@pytest.fixture
def stack(transactional_db, template_disk, tmp_path) -> Stack:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = stack_env(url, tmp_path)
    boot = bootstrap_org()
    server = start_web(env, port, tmp_path / "server.log")
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {boot['api_key']}"}, timeout=30)
    try:
        s = Stack(url=url, bootstrap=boot, login=("alice", PASSWORD), api=api, workdir=tmp_path,
                  template_disk=template_disk, env=env, server=server)
        yield s
    finally:
        for agent in getattr(locals().get("s"), "agents", []):
            agent.stop()
        for proc in getattr(locals().get("s"), "workers", []):
            stop_process(proc)
        api.close()
        stop_process(server)


@pytest.fixture
def etcd_env(monkeypatch, settings):
    """The test etcd for the processes a stack starts (ETCD_ENDPOINTS) and for this one (settings);
    request it before the stack, whose environment is read when it starts."""
    from fleetweb.reboots import etcd
    from scripts.services import test_etcd_endpoints

    endpoints = test_etcd_endpoints()
    monkeypatch.setenv("ETCD_ENDPOINTS", ",".join(endpoints))   # the uvicorn the stack starts
    settings.ETCD_ENDPOINTS = endpoints                         # this process (bootstrap, checks)
    settings.ETCD_USERNAME = settings.ETCD_PASSWORD = None
    yield endpoints
    etcd.reset_client()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = ROOT / "screenshots"


@pytest.fixture
def browser(monkeypatch):
    """Chromium for one test.  Playwright's sync API runs an event loop in this thread, which makes
    Django refuse ORM calls from the test; those calls are ours and synchronous, so allow them
    while the browser is open (and only then: the fixture is function-scoped)."""
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def browser_page(browser):
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    # Playwright waits 30 s for an action and 5 s for an expect() by default; on a busy host a page
    # that renders in 1 s can take several. Waiting longer costs nothing when the page is there.
    page.set_default_timeout(60_000)
    expect.set_options(timeout=30_000)
    SCREENSHOTS.mkdir(exist_ok=True)
    try:
        yield page
    finally:
        ctx.close()
