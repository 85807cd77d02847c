"""Shared plumbing for the benchmark scripts (not a test module).

Everything binds to 127.0.0.1 on a free port; every process started here is stopped by its PID
(process group) on exit, including on Ctrl-C and SIGTERM.  Figures go to stdout as ``name=value``
lines, progress to stderr.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import resource
import secrets as pysecrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts.webserver import WEBSOCKET_ARGS  # noqa: E402  (the web process's options, as make run's)

ORIG_ENV = dict(os.environ)  # before setup_django() exports fleetweb's settings (the peer must not see them)
BIN = Path(sys.executable).parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BENCH_DB = "fleetweb_bench"
PROTECTED_DBS = {"postgres", "template0", "template1"}


# -- output ------------------------------------------------------------------------------------
def emit(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{name}={value}", flush=True)


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def ratio(a, b):
    return a / b if a is not None and b else None


def emit_ratio(name, a, b):
    r = ratio(a, b)
    emit(name, "n/a" if r is None else round(r, 3))


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))  # nearest rank
    return s[k]


# -- limits and processes -------------------------------------------------------------------
def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:  # runs in the child before exec: the limit survives exec
    raise_nofile()


_PROCS: list[subprocess.Popen] = []
_CLEANUPS: list = []


def start(cmd, *, env=None, log_path=None, stdin=None, stdout=None, cwd=ROOT) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdin=stdin,
                            stdout=stdout if stdout is not None else out,
                            stderr=out if log_path else None,
                            start_new_session=True, preexec_fn=_child_setup)
    _PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    if proc in _PROCS:
        _PROCS.remove(proc)


def on_exit(fn) -> None:
    _CLEANUPS.append(fn)


def _cleanup_all() -> None:
    for proc in list(_PROCS):
        try:
            stop(proc, timeout=5)
        except Exception as exc:  # keep stopping the others
            log(f"could not stop pid {proc.pid}: {exc}")
    while _CLEANUPS:
        fn = _CLEANUPS.pop()
        try:
            fn()
        except Exception as exc:
            log(f"cleanup failed: {exc}")


def install_cleanup() -> None:
    atexit.register(_cleanup_all)

    def _sig(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _sig)
    signal.signal(signal.SIGHUP, _sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- database ---------------------------------------------------------------------------------
class Database:
    """A throw-away database: a fresh SQLite file, or the PostgreSQL database the URL names
    (``fleetweb_bench`` when it names none; dropped and created again, dropped at the end)."""

    def __init__(self, url: str | None, workdir: Path):
        self.workdir = workdir
        self.admin_url = None
        if not url or url.startswith("sqlite"):
            self.url = f"sqlite:///{workdir / 'bench.sqlite3'}"
            self.kind = "sqlite"
        else:
            p = urlparse(url)
            if p.scheme not in ("postgres", "postgresql", "pgsql"):
                raise SystemExit(f"--database-url: unsupported scheme {p.scheme!r}")
            self.kind = "postgres"
            self.name = p.path.strip("/") or BENCH_DB
            if self.name in PROTECTED_DBS or not self.name.replace("_", "").isalnum():
                raise SystemExit(f"--database-url: the bench drops and creates its database; name one of "
                                 f"its own (e.g. /{BENCH_DB}), not {self.name!r}")
            self.url = urlunparse(p._replace(path=f"/{self.name}"))
            self.admin_url = urlunparse(p._replace(scheme="postgresql", path="/postgres"))

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def create(self) -> None:
        if self.kind == "postgres":
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            self._admin(f"CREATE DATABASE {self.name}")
            on_exit(self.drop)

    def drop(self) -> None:
        if self.kind == "postgres":
            try:
                from django.db import connections

                connections.close_all()
            except Exception:
                pass
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def bench_env(db_url: str, redis_url: str, workdir: Path, **extra) -> dict:
    env = {**os.environ,
           "DATABASE_URL": db_url,
           "REDIS_URL": redis_url,
           # Each run has its own keys and channels (under $FLEET_REDIS_PREFIX when set).
           "FLEET_REDIS_PREFIX": f"{os.environ.get('FLEET_REDIS_PREFIX') or 'fleet-bench'}-{uuid.uuid4().hex[:8]}",
           "FLEET_VAR_DIR": str(workdir / "var"),
           "SECRET_KEY": "bench-" + "x" * 40,
           "FLEET_HEARTBEAT_INTERVAL": "86400",
           "FLEET_OFFLINE_AFTER": "864000",
           # The benches offer agents far more frames than real ones send: measure throughput, not the
           # per-connection frame budgets (issue 9).
           "FLEET_AGENT_HELLO_RATE": "1000000/minute",
           "FLEET_AGENT_EVENT_RATE": "1000000/minute",
           "FLEET_AGENT_STATUS_RATE": "1000000/minute",
           "DJANGO_SETTINGS_MODULE": "fleetweb.settings",
           "DEBUG": "false",
           "PYTHONUNBUFFERED": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def setup_django(env: dict) -> None:
    """Configure Django in this process with the same environment the server gets, and migrate."""
    for k in ("DATABASE_URL", "REDIS_URL", "FLEET_REDIS_PREFIX", "FLEET_VAR_DIR", "SECRET_KEY",
              "FLEET_HEARTBEAT_INTERVAL", "FLEET_OFFLINE_AFTER", "DJANGO_SETTINGS_MODULE", "DEBUG",
              "FLEET_PUBLIC_URL"):
        if k in env:
            os.environ[k] = env[k]
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    log("migrate ...")
    call_command("migrate", verbosity=0, interactive=False)


def bootstrap(org: str, group: str = "bench") -> dict:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("bootstrap", org=org, user=f"{org}-admin", password="bench-password", group=group,
                 json=True, stdout=out)
    return json.loads(out.getvalue())


def seed_hosts(org_slug: str, group_slug: str, n: int, *, credentials: bool = True,
               prefix: str = "h") -> list[str]:
    """Bulk-create N hosts (and a credential each); return the credential secrets."""
    from django.db import transaction
    from django.utils import timezone

    from fleetweb.core.secrets import new_secret
    from fleetweb.fleet.models import Group, Host, HostCredential

    group = Group.objects.get(organization__slug=org_slug, slug=group_slug)
    now = timezone.now()
    out: list[str] = []
    tag = uuid.uuid4().hex[:6]
    step = 5000
    for start_i in range(0, n, step):
        hosts = [Host(id=uuid.uuid4(), organization_id=group.organization_id, group=group,
                      machine_id=uuid.uuid4().hex, hostname=f"{prefix}{tag}-{i:06d}", registered_at=now,
                      partitions=PARTITIONS, version="100.0.0")
                 for i in range(start_i, min(n, start_i + step))]
        with transaction.atomic():
            Host.objects.bulk_create(hosts, batch_size=1000)
            if credentials:
                creds = []
                for h in hosts:
                    s = new_secret("fwh")
                    creds.append(HostCredential(host=h, lookup=s.lookup, digest=s.digest, created=now))
                    out.append(s.secret)
                HostCredential.objects.bulk_create(creds, batch_size=1000)
    return out


PARTITIONS = [
    {"label": "USR-A", "number": 3, "version": "100.0.0", "priority": 1, "tries": 0, "successful": True,
     "active": True},
    {"label": "USR-B", "number": 4, "version": None, "priority": 0, "tries": 0, "successful": False,
     "active": False},
]


# -- the server -------------------------------------------------------------------------------
UVICORN_ARGS = [*WEBSOCKET_ARGS, "--no-access-log", "--loop", "uvloop", "--http", "httptools", "--backlog", "4096"]


def start_uvicorn(env: dict, port: int, log_path: Path, *, workers: int = 1) -> subprocess.Popen:
    """One uvicorn process, or with ``workers`` > 1 uvicorn's supervisor and that many worker
    processes on one port (``--workers``, as ``make run`` runs FLEET_WEB_PROCESSES): returns once
    /healthz answers and, with workers, once every worker has started (``worker_pids``)."""
    cmd = [BIN / "uvicorn", "fleetweb.asgi:application", "--host", "127.0.0.1", "--port", str(port),
           *UVICORN_ARGS, *(["--workers", str(workers), "--timeout-worker-healthcheck", "60"] if workers > 1 else [])]
    proc = start(cmd, env=env, log_path=log_path)
    deadline = time.monotonic() + 60 * workers
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with {proc.returncode}; log: {log_path}\n"
                             + tail(log_path))
        try:
            status, _ = asyncio.run(http_request(port, "GET", "/healthz", timeout=2))
            started = Path(log_path).read_text(errors="replace").count("Application startup complete")
            if status == 200 and (workers == 1 or (started >= workers and len(worker_pids(proc)) == workers)):
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"uvicorn did not answer /healthz within {60 * workers} s; log: {log_path}")


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The processes serving requests: uvicorn's workers under its supervisor, or the process itself."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return []
    # multiprocessing's resource tracker is a child too: workers are the ones running uvicorn's server
    pids = [int(c) for c in children if "multiprocessing.resource_tracker" not in _cmdline(int(c))]
    return pids or [proc.pid]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def socket_count(pid: int) -> int:
    """Open sockets of a process (its agent connections, plus a few of its own)."""
    n = 0
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(fd.path).startswith("socket:")
            except OSError:
                pass
    except OSError:
        pass
    return n


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the process group (a crash: no shutdown, no close frames) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    if proc in _PROCS:
        _PROCS.remove(proc)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- a tiny HTTP/1.1 client (fresh connection, Connection: close, like an agent's curl) ------------
async def http_request(port: int, method: str, path: str, *, headers: dict | None = None,
                       body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            h = {"Host": f"127.0.0.1:{port}", "Connection": "close", "User-Agent": "fleetweb-bench",
                 **(headers or {})}
            if body is not None:
                h["Content-Length"] = str(len(body))
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
            writer.write(head.encode() + (body or b""))
            data = await reader.read()
        finally:
            writer.close()
        status = int(data.split(b" ", 2)[1])
        return status, data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""

    return await asyncio.wait_for(go(), timeout)


def new_workdir(name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"fleetweb-{name}-"))
    on_exit(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def token_hex(n: int = 8) -> str:
    return pysecrets.token_hex(n)
