#!/usr/bin/env python3
"""Local Redis and etcd for ``make run`` and the test suite: start if not reachable, wait, stop by PID.

Stdlib only, so it runs before the virtualenv exists and imports cheaply from test fixtures.

As a library (tests)::

    from scripts.services import test_etcd_endpoints, test_redis_url, start_etcd

    endpoints = test_etcd_endpoints()   # ["http://127.0.0.1:PORT"]: $FLEET_TEST_ETCD_ENDPOINTS,
                                        # else a private etcd on free ports, stopped at exit
    url = test_redis_url()              # $FLEET_TEST_REDIS_URL, else a private redis-server
    with start_etcd() as etcd:          # a throw-away etcd you may kill (failure tests)
        etcd.endpoint; etcd.stop()

As a CLI::

    scripts/services.py start [--tag dev] [--free-ports] [--redis-port 6379] [--etcd-port 2379] [--format sh|json]
    scripts/services.py stop  [--tag dev]
    scripts/services.py status [--tag dev]

``start`` reuses a service already answering on the requested port (nothing recorded for it, so
``stop`` leaves it alone); what it starts is recorded in ``var/run/services-<tag>.json`` and
``stop`` ends exactly those PIDs (their process groups).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("FLEET_VAR_DIR", ROOT / "var"))
RUN_DIR = VAR / "run"
LOG_DIR = VAR / "log"
HOST = "127.0.0.1"

REDIS_BIN = os.environ.get("FLEET_REDIS_SERVER", "redis-server")
ETCD_BIN = os.environ.get("FLEET_ETCD_BIN", "etcd")


class ServiceError(RuntimeError):
    pass


# --------------------------------------------------------------------------- probes

def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def etcd_healthy(endpoint: str, timeout: float = 1.0) -> bool:
    """True when GET <endpoint>/health says {"health": "true"}."""
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + "/health", timeout=timeout) as resp:
            return str(json.loads(resp.read() or b"{}").get("health")).lower() == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


# --------------------------------------------------------------------------- processes

@dataclass
class Service:
    name: str
    url: str                      # redis://127.0.0.1:P/0 or http://127.0.0.1:P
    port: int
    pid: int | None = None        # None: reused, not ours
    data_dir: str | None = None
    log: str | None = None
    cmd: list[str] = field(default_factory=list)
    temporary: bool = False       # data_dir removed on stop

    @property
    def started(self) -> bool:
        return self.pid is not None

    @property
    def endpoint(self) -> str:
        return self.url

    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid, self.cmd[0] if self.cmd else None)

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid is not None:
            stop_pid(self.pid, timeout=timeout, expect=self.cmd[0] if self.cmd else None)
            self.pid = None
        if self.temporary and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """True if PID runs and (when EXPECT is given) its command line mentions EXPECT's basename."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if expect:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        comm, _, rest = stat.rpartition(")")
        if rest.split()[:1] == ["Z"]:    # zombie: exited, not yet reaped
            return False
        name = os.path.basename(expect)
        # redis rewrites its title, leaving cmdline empty for a moment; comm keeps 15 characters
        return not cmdline.strip() or name in cmdline or name[:15] in comm
    return True


def stop_pid(pid: int, timeout: float = 10.0, expect: str | None = None) -> None:
    """SIGTERM the process group PID leads (or PID alone), then SIGKILL after TIMEOUT seconds."""
    if not pid_alive(pid, expect):
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    kill = (lambda sig: os.killpg(pgid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
    with contextlib.suppress(ProcessLookupError):
        kill(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid, expect):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        kill(signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _spawn(cmd: list[str], log_path: Path) -> int:
    import subprocess

    if shutil.which(cmd[0]) is None:
        raise ServiceError(f"{cmd[0]} not found on PATH: run `make deps` (Debian package "
                           f"{'redis-server' if 'redis' in cmd[0] else 'etcd-server'})")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
    return proc.pid


def _wait(check, what: str, pid: int, cmd0: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not pid_alive(pid, cmd0):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceError(f"{what} exited during start-up; log {log}:\n{tail}")
        time.sleep(0.1)
    stop_pid(pid, expect=cmd0)
    raise ServiceError(f"{what} did not become healthy within {timeout:.0f}s; see {log}")


def start_redis(port: int | None = 6379, *, reuse: bool = True, data_dir: str | os.PathLike | None = None,
                timeout: float = 20.0) -> Service:
    """Redis on 127.0.0.1:PORT (None: a free port). Reuses a server already answering when REUSE."""
    port = port or free_port()
    url = f"redis://{HOST}:{port}/0"
    if redis_ping(port):
        if reuse:
            return Service("redis", url, port)
        raise ServiceError(f"port {port} already has a Redis server")
    if port_open(port):
        raise ServiceError(f"port {port} is taken by something that is not Redis")
    temporary = data_dir is None and port != 6379
    data = Path(data_dir) if data_dir else (Path(tempfile.mkdtemp(prefix="redis-", dir=_tmp())) if temporary
                                              else VAR / "redis")
    data.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"redis-{port}.log"
    cmd = [REDIS_BIN, "--bind", HOST, "--port", str(port), "--dir", str(data), "--save", "",
           "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
    try:
        pid = _spawn(cmd, log)
        _wait(lambda: redis_ping(port), f"redis-server on port {port}", pid, cmd[0], log, timeout)
    except ServiceError:
        if temporary:
            shutil.rmtree(data, ignore_errors=True)
        raise
    return Service("redis", url, port, pid, str(data), str(log), cmd, temporary)


def start_etcd(client_port: int | None = None, peer_port: int | None = None, *, reuse: bool = False,
               data_dir: str | os.PathLike | None = None, timeout: float = 30.0) -> Service:
    """etcd on 127.0.0.1:CLIENT_PORT (None: free ports, temporary data dir removed on stop)."""
    temporary = data_dir is None and client_port is None
    client_port = client_port or free_port()
    url = f"http://{HOST}:{client_port}"
    if etcd_healthy(url):
        if reuse:
            return Service("etcd", url, client_port)
        raise ServiceError(f"port {client_port} already has an etcd server")
    if port_open(client_port):
        raise ServiceError(f"port {client_port} is taken by something that is not a healthy etcd")
    peer_port = peer_port or free_port()
    while peer_port == client_port:
        peer_port = free_port()
    if port_open(peer_port):
        raise ServiceError(f"etcd peer port {peer_port} is taken")
    data = Path(data_dir) if data_dir else (Path(tempfile.mkdtemp(prefix="etcd-", dir=_tmp())) if temporary
                                              else VAR / "etcd")
    data.parent.mkdir(parents=True, exist_ok=True)
    peer = f"http://{HOST}:{peer_port}"
    log = LOG_DIR / f"etcd-{client_port}.log"
    cmd = [ETCD_BIN, "--name", "default", "--data-dir", str(data),
           "--listen-client-urls", url, "--advertise-client-urls", url,
           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
           "--initial-cluster", f"default={peer}", "--initial-cluster-state", "new",
           "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
    try:
        pid = _spawn(cmd, log)
        _wait(lambda: etcd_healthy(url), f"etcd on port {client_port}", pid, cmd[0], log, timeout)
    except ServiceError:
        if temporary:
            shutil.rmtree(data, ignore_errors=True)
        raise
    return Service("etcd", url, client_port, pid, str(data), str(log), cmd, temporary)


def _tmp() -> str:
    path = VAR / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# --------------------------------------------------------------------------- recorded sets (CLI, devstack)

def _state_file(tag: str) -> Path:
    return RUN_DIR / f"services-{tag}.json"


def load(tag: str) -> list[Service]:
    try:
        return [Service(**item) for item in json.loads(_state_file(tag).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def _save(tag: str, services: list[Service]) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    ours = [asdict(s) for s in services if s.started]
    path = _state_file(tag)
    if ours:
        path.write_text(json.dumps(ours, indent=1))
        for s in services:
            if s.started:
                (RUN_DIR / f"{s.name}-{tag}.pid").write_text(f"{s.pid}\n")
    else:
        path.unlink(missing_ok=True)


def ensure(tag: str = "dev", *, redis: bool = True, etcd: bool = True, free_ports: bool = False,
           redis_port: int = 6379, etcd_port: int = 2379, etcd_peer_port: int = 2380,
           free_etcd_port: bool = False) -> dict[str, Service]:
    """Start what is missing (recorded under TAG) and return {"redis": Service, "etcd": Service}.

    FREE_PORTS: private servers on free ports; otherwise the fixed ports, reusing a server that
    already answers there. FREE_ETCD_PORT: only etcd on free ports."""
    out: dict[str, Service] = {}
    recorded = {s.name: s for s in load(tag) if s.alive()}
    try:
        if redis:
            s = recorded.get("redis")
            out["redis"] = s if s and redis_ping(s.port) else (
                start_redis(None, reuse=False) if free_ports else
                start_redis(redis_port, reuse=True))
        if etcd:
            s = recorded.get("etcd")
            out["etcd"] = s if s and etcd_healthy(s.url) else (
                start_etcd(None, None, reuse=False) if free_ports or free_etcd_port else
                start_etcd(etcd_port, etcd_peer_port, reuse=True, data_dir=VAR / "etcd"))
    except Exception:
        for s in out.values():
            if s.name not in recorded:
                s.stop()
        raise
    _save(tag, list(out.values()))
    return out


def stop(tag: str = "dev") -> list[tuple[str, int | None]]:
    """Stop what ensure(TAG) started; returns [(name, pid)]."""
    services = load(tag)
    stopped = [(s.name, s.pid) for s in services]
    for s in services:
        s.stop()
        (RUN_DIR / f"{s.name}-{tag}.pid").unlink(missing_ok=True)
    _state_file(tag).unlink(missing_ok=True)
    return stopped


def env_for(services: dict[str, Service], prefix: str = "") -> dict[str, str]:
    env = {}
    if "redis" in services:
        env[f"{prefix}REDIS_URL"] = services["redis"].url
    if "etcd" in services:
        env[f"{prefix}ETCD_ENDPOINTS"] = services["etcd"].url
    return env


# --------------------------------------------------------------------------- test helpers

_private: dict[str, Service] = {}


def _stop_private() -> None:
    for s in list(_private.values()):
        s.stop()
    _private.clear()


def test_etcd_endpoints() -> list[str]:
    """etcd endpoints for tests: $FLEET_TEST_ETCD_ENDPOINTS (set by scripts/test.sh) or a private etcd
    on free ports started once per process and stopped at exit. Use a unique key prefix per test."""
    configured = os.environ.get("FLEET_TEST_ETCD_ENDPOINTS", "").strip()
    if configured:
        return [e.strip() for e in configured.split(",") if e.strip()]
    if "etcd" not in _private or not _private["etcd"].alive():
        if not _private:
            atexit.register(_stop_private)
        _private["etcd"] = start_etcd()
    return [_private["etcd"].url]


def test_redis_url() -> str:
    """Redis URL for tests: $FLEET_TEST_REDIS_URL (set by scripts/test.sh) or a private redis-server
    on a free port started once per process and stopped at exit."""
    configured = os.environ.get("FLEET_TEST_REDIS_URL", "").strip()
    if configured:
        return configured
    if "redis" not in _private or not _private["redis"].alive():
        if not _private:
            atexit.register(_stop_private)
        _private["redis"] = start_redis(None, reuse=False)
    return _private["redis"].url


test_etcd_endpoints.__test__ = False  # not pytest tests
test_redis_url.__test__ = False


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_start = sub.add_parser("start", help="start Redis and etcd unless reachable; print their URLs")
    p_start.add_argument("--tag", default="dev", help="name of this set (state in var/run/services-TAG.json)")
    p_start.add_argument("--free-ports", action="store_true", help="private servers on free ports (tests)")
    p_start.add_argument("--free-etcd-port", action="store_true", help="only etcd on free ports")
    p_start.add_argument("--redis-port", type=int, default=6379)
    p_start.add_argument("--etcd-port", type=int, default=2379)
    p_start.add_argument("--etcd-peer-port", type=int, default=2380)
    p_start.add_argument("--no-redis", action="store_true")
    p_start.add_argument("--no-etcd", action="store_true")
    p_start.add_argument("--env-prefix", default="", help="prefix for the printed variable names")
    p_start.add_argument("--format", choices=["text", "sh", "json"], default="text")
    for name in ("stop", "status"):
        p = sub.add_parser(name)
        p.add_argument("--tag", default="dev")
    args = parser.parse_args(argv)

    if args.action == "start":
        try:
            services = ensure(args.tag, redis=not args.no_redis, etcd=not args.no_etcd,
                              free_ports=args.free_ports, redis_port=args.redis_port,
                              etcd_port=args.etcd_port, etcd_peer_port=args.etcd_peer_port,
                              free_etcd_port=args.free_etcd_port)
        except ServiceError as exc:
            print(f"services: error: {exc}", file=sys.stderr)
            return 1
        env = env_for(services, args.env_prefix)
        if args.format == "sh":
            for k, v in env.items():
                print(f"export {k}={shlex.quote(v)}")
        elif args.format == "json":
            print(json.dumps({"env": env, "services": [asdict(s) for s in services.values()]}))
        else:
            for s in services.values():
                how = f"started, pid {s.pid}" if s.started else "already running, reused"
                print(f"{s.name}: {s.url} ({how})")
        return 0
    if args.action == "stop":
        for name, pid in stop(args.tag):
            print(f"{name}: stopped pid {pid}")
        return 0
    if args.action == "status":
        services = load(args.tag)
        if not services:
            print(f"no services recorded for tag {args.tag!r}")
        for s in services:
            ok = redis_ping(s.port) if s.name == "redis" else etcd_healthy(s.url)
            print(f"{s.name}: {s.url} pid {s.pid} {'healthy' if ok else 'NOT healthy'}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
