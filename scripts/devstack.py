#!/usr/bin/env python3
"""``make run``: the whole Fleetweb stack on this machine, in the foreground, with three simulated hosts.

Steps: Redis + etcd (reused when already answering), migrate, bootstrap the demo organization,
then web (FLEET_WEB_PROCESSES uvicorn processes behind one port, default 2), worker, beat and
``agent run`` for demo-host-1..3 on disk images built by ``imagebuilder disk``. A second run reuses
the database, disks and registrations under ``var/`` (``$FLEET_VAR_DIR``).
Ctrl-C, SIGTERM or SIGHUP, once or many times, stops every child (its whole process group), and the
Redis/etcd this script started.

Run it with the virtualenv's interpreter (``.venv/bin/python scripts/devstack.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import services  # noqa: E402  (scripts/services.py, stdlib only)
import webserver  # noqa: E402  (scripts/webserver.py, stdlib only)

ROOT = services.ROOT
VAR = services.VAR
DEMO = VAR / "demo"
BASE_ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:CoreOS Admin:/home/core:/bin/bash\n",
    "group": "root:x:0:\nwheel:x:10:root,core\nsudo:x:150:core\ndocker:x:233:core\ncore:x:500:\n",
    "shadow": "root:*:1::::::\ncore:*:1::::::\n",
}
BIN = Path(sys.executable).parent
ORG, USER, GROUP = "demo", "admin", "web"
VERSION = "100.0.0"

EXIT_NOT_REGISTERED, EXIT_UNAUTHORIZED = 40, 41   # agent/config.py
TOKEN_EXITS = {10, 11, 12, 13}                     # invalid, expired, revoked, exhausted token

WEB_PROCESSES_VAR = "FLEET_WEB_PROCESSES"
DEFAULT_WEB_PROCESSES = 2

# Taken by the output threads and the main thread, never by a signal handler (see StopRequest).
_print_lock = threading.Lock()
_stdout_gone = False
_COLORS = ["36", "33", "35", "32", "34", "31", "96", "93", "95"]
_color_of: dict[str, str] = {}
USE_COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def say(name: str, text: str) -> None:
    global _stdout_gone
    color = _color_of.setdefault(name, _COLORS[len(_color_of) % len(_COLORS)])
    prefix = f"{name:<12}|"
    if USE_COLOR:
        prefix = f"\033[{color}m{prefix}\033[0m"
    with _print_lock:
        if _stdout_gone:
            return
        try:
            for line in text.splitlines() or [""]:
                sys.stdout.write(f"{prefix} {line}\n")
            sys.stdout.flush()
        except (BrokenPipeError, ConnectionResetError):
            # Nobody reads our output any more (a pipe's reader died with the terminal): keep
            # draining the children's output so that none blocks on it, and keep stopping.
            _stdout_gone = True
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)   # loaded here: a forked child must not dlopen
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Child pre-exec: SIGTERM if devstack itself dies without cleaning up (PR_SET_PDEATHSIG)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def web_processes(environ=os.environ) -> int:
    """FLEET_WEB_PROCESSES: how many web processes serve the one port (default 2)."""
    raw = environ.get(WEB_PROCESSES_VAR, "").strip() or str(DEFAULT_WEB_PROCESSES)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise SystemExit(f"devstack: {WEB_PROCESSES_VAR} must be a whole number of processes, at least 1, "
                         f"not {raw!r}")
    return n


# uvicorn's supervisor kills a worker that does not answer its health ping within this many seconds
# (its default, 5, killed workers holding 10,000 agents during a garbage collection: README, Concurrency).
WORKER_HEALTHCHECK_TIMEOUT = 60


def web_command(port: int, processes: int) -> list[str]:
    """uvicorn's own supervisor: one listening socket, PROCESSES worker processes accepting on it,
    each restarted when it dies (see README, Processes)."""
    return [str(BIN / "uvicorn"), "fleetweb.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(processes), "--timeout-worker-healthcheck", str(WORKER_HEALTHCHECK_TIMEOUT),
            *webserver.WEBSOCKET_ARGS]


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of PID from /proc, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[2])


def group_members(pgid: int) -> list[int]:
    """The processes of process group PGID that still run (an exited, unreaped zombie does not)."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None and stat[0] not in ("Z", "X") and stat[2] == pgid:
                members.append(int(entry.name))
    return members


class Stopping(Exception):
    """A stop was requested while the stack was being set up or supervised."""


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP only record that a stop was asked for; the main thread stops.

    A Python signal handler runs on the main thread between two bytecodes, wherever that thread
    is: inside say() holding the output lock, inside a blocked write to a full pipe, inside a lock
    of threading.Event.  A handler that takes any lock can deadlock (one that printed did: a second
    signal arriving while the first one's message waited for stdout left every child running).  So
    the handler stores the signal number, nothing else, and the interpreter's C-level handler writes
    a byte to the wake-up pipe (signal.set_wakeup_fd), which ends the main thread's wait() at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, self._record)

    def _record(self, signum: int, _frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def wait(self, timeout: float) -> bool:
        """Sleep up to TIMEOUT seconds or until a stop is requested; True if one was."""
        if not self.requested:
            select.select([self._r], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 512):
                pass
        return self.requested

    def check(self) -> None:
        if self.requested:
            raise Stopping

    def hold(self) -> None:
        """Block the signals for good: once everything is stopped, one arriving while the interpreter
        exits (its handlers reset to the default) would end it by that signal instead of its exit code."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)


class Child:
    """One process in its own process group, its output prefixed with NAME (and kept when CAPTURE)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], critical: bool = True,
                 capture: bool = False):
        self.name, self.cmd, self.env, self.critical = name, cmd, env, critical
        self.proc: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None
        self.restarts = 0
        self.next_start = 0.0
        self.lines: list[str] | None = [] if capture else None

    def start(self, announce: bool = True) -> None:
        if announce:
            say("devstack", f"starting {self.name}: {' '.join(self.cmd)}")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.reader = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self.reader.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if self.lines is not None:
                self.lines.append(line)
            say(self.name, line)
        proc.stdout.close()

    def output(self) -> str:
        if self.reader is not None:
            self.reader.join()
        return "".join(f"{line}\n" for line in self.lines or ())

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def alive(self) -> bool:
        """The process, or anything it started in its process group, still runs."""
        return self.proc is not None and (self.running() or bool(group_members(self.proc.pid)))

    def signal(self, sig: int) -> None:
        """SIG to the whole process group (web's worker processes, the worker's pool, ...)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> bool:
        """True once the process and everything else in its process group have exited."""
        if self.proc is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        while group_members(self.proc.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        if self.reader:
            self.reader.join(max(0.1, min(2.0, deadline - time.monotonic())))
        return True

    def stop(self, timeout: float = 10) -> bool:
        """SIGTERM the process group, SIGKILL what is left after TIMEOUT; False if something survived."""
        self.signal(signal.SIGTERM)
        if self.wait(timeout):
            return True
        self.signal(signal.SIGKILL)
        return self.wait(5)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


class Stack:
    def __init__(self, args: argparse.Namespace, stop: StopRequest, web_processes: int):
        self.args = args
        self.stop = stop
        self.web_processes = web_processes
        self.port = args.port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.children: list[Child] = []
        self.agents: dict[str, Child] = {}
        self.started_services = False
        self.exit_code = 0
        self.env: dict[str, str] = {}
        self.pidfile: Path | None = None

    # ---------------------------------------------------------------- set-up

    def lock(self) -> None:
        services.RUN_DIR.mkdir(parents=True, exist_ok=True)
        pidfile = services.RUN_DIR / "devstack.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
            if pid != os.getpid() and services.pid_alive(pid, "devstack"):
                raise SystemExit(f"devstack: already running as pid {pid} (stop it with Ctrl-C or kill {pid})")
        pidfile.write_text(f"{os.getpid()}\n")
        self.pidfile = pidfile     # from here on, var/run/services-dev.json is ours to stop

    def check_port(self) -> None:
        if services.port_open(self.port):
            raise SystemExit(f"devstack: port {self.port} on 127.0.0.1 is already in use; stop what listens "
                             f"there or pass --port")

    def ensure_services(self) -> None:
        want_redis = not os.environ.get("REDIS_URL")
        want_etcd = not os.environ.get("ETCD_ENDPOINTS")
        if want_redis or want_etcd:
            try:
                found = services.ensure("dev", redis=want_redis, etcd=want_etcd, free_ports=self.args.free_ports)
            except services.ServiceError as exc:
                raise SystemExit(f"devstack: {exc}") from None
            self.started_services = any(s.started for s in found.values())
            for s in found.values():
                how = f"started, pid {s.pid}, log {s.log}" if s.started else "already running, reused"
                say("devstack", f"{s.name}: {s.url} ({how})")
        else:
            found = {}
        env = dict(os.environ)
        env.update(services.env_for(found))
        if want_etcd and not os.environ.get("ETCD_USERNAME"):
            # Our etcd runs with auth, like production: each demo host gets its own least-privilege user.
            env["ETCD_USERNAME"], env["ETCD_PASSWORD"] = "root", self.etcd_root_password()
        env.setdefault("DATABASE_URL", f"sqlite:///{VAR / 'fleetweb.sqlite3'}")
        env["FLEET_PUBLIC_URL"] = os.environ.get("FLEET_PUBLIC_URL", self.base_url)
        env.setdefault("FLEET_MEDIA_ROOT", str(VAR / "media"))
        env["PYTHONUNBUFFERED"] = "1"
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        # Other terminals (make demo-update, manage.py) talk to the same stack with this.
        DEMO.mkdir(parents=True, exist_ok=True)
        keys = ("DATABASE_URL", "REDIS_URL", "ETCD_ENDPOINTS", "ETCD_USERNAME", "ETCD_PASSWORD", "FLEET_PUBLIC_URL",
                "FLEET_MEDIA_ROOT")
        (DEMO / "env.sh").write_text("".join(f"export {k}='{env[k]}'\n" for k in keys if env.get(k)))
        say("devstack", f"DATABASE_URL={env['DATABASE_URL']} REDIS_URL={env.get('REDIS_URL', '')} "
                        f"ETCD_ENDPOINTS={env.get('ETCD_ENDPOINTS', '')} FLEET_PUBLIC_URL={env['FLEET_PUBLIC_URL']}")

    @staticmethod
    def etcd_root_password() -> str:
        """etcd's root password for `make run`, generated once into var/etcd-root-password (0600)."""
        path = VAR / "etcd-root-password"
        if not path.exists():
            VAR.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def password(self) -> str:
        path = VAR / "demo-password"
        if not path.exists():
            VAR.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(12) + "\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def run_step(self, name: str, cmd: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
        """Run a set-up command to completion; its output is shown prefixed and returned.  A stop
        request ends it (Stopping), so does TIMEOUT (subprocess.TimeoutExpired)."""
        step = Child(name, cmd, env, capture=True)
        step.start(announce=False)
        deadline = time.monotonic() + timeout
        try:
            while step.running():
                if self.stop.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                    raise Stopping
                if time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout)
        finally:
            if step.alive():
                step.stop()
        return step.poll(), step.output()

    def migrate_and_bootstrap(self) -> dict:
        manage = [sys.executable, str(ROOT / "manage.py")]
        rc, _ = self.run_step("migrate", manage + ["migrate", "--noinput"], self.env)
        if rc != 0:
            raise SystemExit(f"devstack: manage.py migrate failed (exit {rc})")
        if self.env.get("ETCD_USERNAME") and self.env.get("ETCD_ENDPOINTS"):
            rc, _ = self.run_step("etcd auth", manage + ["provision_etcd", "--enable-auth"], self.env)
            if rc != 0:
                raise SystemExit(f"devstack: manage.py provision_etcd --enable-auth failed (exit {rc}); "
                                 f"an etcd that already has auth needs its root password in var/etcd-root-password")
        # --password=...: a generated password may start with "-"
        rc, out = self.run_step("bootstrap", manage + ["bootstrap", "--org", ORG, "--user", USER,
                                                       f"--password={self.password()}", "--group", GROUP, "--json"],
                                self.env)
        if rc != 0:
            raise SystemExit(f"devstack: manage.py bootstrap failed (exit {rc})")
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                missing = {"org", "user", "api_key", "group", "enrollment_token"} - set(data)
                if missing:
                    raise SystemExit(f"devstack: bootstrap JSON lacks {sorted(missing)}")
                path = DEMO / "bootstrap.json"
                DEMO.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data, indent=1) + "\n")
                path.chmod(0o600)
                return data
        raise SystemExit("devstack: manage.py bootstrap --json printed no JSON object")

    def prepare_host(self, i: int) -> tuple[Path, bool]:
        """Disk image, scratch root and machine id of demo-host-I; False if the disk could not be built."""
        host = DEMO / f"host-{i}"
        (host / "state").mkdir(parents=True, exist_ok=True)
        etc = host / "root" / "etc"
        (etc / "coreos").mkdir(parents=True, exist_ok=True)
        conf = etc / "coreos" / "update.conf"
        if not conf.exists():
            conf.write_text("GROUP=stable\nREBOOT_STRATEGY=best-effort\n")
        # The accounts a CoreOS root ships with, so cloud-config `users` can join sudo/docker.
        for name, text in BASE_ACCOUNTS.items():
            if not (etc / name).exists():
                (etc / name).write_text(text)
                (etc / name).chmod(0o640 if name == "shadow" else 0o644)
        mid = etc / "machine-id"
        if not mid.exists() or len(mid.read_text().strip()) != 32:
            mid.write_text(uuid.uuid4().hex + "\n")
        disk = host / "disk.img"
        if disk.exists():
            return host, True
        tmp = host / "disk.img.partial"
        tmp.unlink(missing_ok=True)
        rc, _ = self.run_step(f"disk-{i}", [str(BIN / "imagebuilder"), "disk", "--output", str(tmp),
                                            "--version", VERSION], self.env)
        if rc == 0 and tmp.exists():
            tmp.rename(disk)
            return host, True
        tmp.unlink(missing_ok=True)
        say("devstack", f"demo-host-{i}: imagebuilder disk failed (exit {rc}); this host is skipped")
        return host, False

    def register(self, i: int, host: Path, token: str) -> bool:
        state = host / "state"
        if (state / "credential").exists():
            # Registered before: check that this server still knows the host (the database may have
            # been reset). `agent run` never exits on a rejected credential, `agent run --once` does.
            env = dict(self.env, FLEET_AGENT_HEARTBEAT="10")
            try:
                rc, _ = self.run_step(f"demo-host-{i}", [str(BIN / "agent"), "run", "--once", "--state-dir",
                                                         str(state)], env, timeout=60)
            except subprocess.TimeoutExpired:
                rc = None
            if rc not in (EXIT_NOT_REGISTERED, EXIT_UNAUTHORIZED):
                return True
            say("devstack", f"demo-host-{i}: the server rejected its credential (exit {rc}); "
                            "clearing its state dir and registering again")
            shutil.rmtree(state, ignore_errors=True)   # credential, pinned signing key, ...: a new server
            state.mkdir(parents=True, exist_ok=True)
        machine_id = (host / "root" / "etc" / "machine-id").read_text().strip()
        rc, _ = self.run_step(f"demo-host-{i}", [
            str(BIN / "agent"), "register", "--server", self.base_url, "--token", token,
            "--state-dir", str(state), "--disk", str(host / "disk.img"), "--root", str(host / "root"),
            "--machine-id", machine_id, "--hostname", f"demo-host-{i}"], self.env, timeout=120)
        if rc != 0:
            say("devstack", f"demo-host-{i}: agent register failed (exit {rc}); this host is skipped")
            return False
        return True

    def wait_for_web(self, web: Child, timeout: float = 90) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stop.check()
            if not web.running():
                return False
            for path in ("/healthz", "/login/"):
                status = http_status(self.base_url + path)
                if status is not None and status < 500:
                    return True
            self.stop.wait(0.5)
        return False

    # ---------------------------------------------------------------- processes

    def spawn(self, name: str, cmd: list[str], critical: bool = True, env: dict | None = None) -> Child:
        child = Child(name, cmd, env or self.env, critical)
        child.start()
        self.children.append(child)
        return child

    def start_agent(self, i: int, host: Path) -> Child:
        env = dict(self.env, FLEET_AGENT_HEARTBEAT=os.environ.get("FLEET_AGENT_HEARTBEAT", "10"))
        child = self.spawn(f"demo-host-{i}", [str(BIN / "agent"), "run", "--state-dir", str(host / "state")],
                           critical=False, env=env)
        child.host = host  # type: ignore[attr-defined]
        child.index = i  # type: ignore[attr-defined]
        self.agents[child.name] = child
        return child

    def run(self) -> int:
        self.lock()
        self.check_port()
        self.ensure_services()
        self.stop.check()
        hosts: list[tuple[int, Path]] = []
        for i in range(1, self.args.hosts + 1):
            host, ok = self.prepare_host(i)
            if ok:
                hosts.append((i, host))
        boot = self.migrate_and_bootstrap()
        self.stop.check()
        web = self.spawn("web", web_command(self.port, self.web_processes))
        self.spawn("worker", [str(BIN / "celery"), "-A", "fleetweb", "worker", "-l", "info", "--concurrency", "2"])
        self.spawn("beat", [str(BIN / "celery"), "-A", "fleetweb", "beat", "-l", "info",
                            "--schedule", str(VAR / "celerybeat-schedule")])
        if not self.wait_for_web(web):
            say("devstack", f"web did not answer on {self.base_url} (see its output above)")
            self.exit_code = 1
            return self.exit_code
        self.token = boot["enrollment_token"]
        for i, host in hosts:
            self.stop.check()
            if self.register(i, host, self.token):
                self.start_agent(i, host)
        self.banner(boot, web)
        return self.supervise()

    def banner(self, boot: dict, web: Child) -> None:
        assert web.proc is not None
        lines = [
            "",
            "=" * 64,
            f"  Fleetweb dashboard: {self.base_url}/",
            f"  web:       {self.web_processes} process{'es' if self.web_processes > 1 else ''} behind port "
            f"{self.port} (uvicorn --workers, supervisor pid {web.proc.pid}; {WEB_PROCESSES_VAR})",
            f"  user:      {boot['user']}",
            f"  password:  {self.password()}   (kept in {VAR / 'demo-password'})",
            f"  API key:   {boot['api_key']}   (Authorization: Bearer ...; {DEMO / 'bootstrap.json'})",
            f"  API docs:  {self.base_url}/api/docs/",
            f"  hosts:     {', '.join(sorted(self.agents)) or 'none'} (group {boot['group']})",
            "  Updates (another terminal):",
            "    make demo-update SCENARIO=good         a release rolls through the hosts (A/B flip)",
            "    make demo-update SCENARIO=bad-payload  damaged payload: refused before the disk",
            "    make demo-update SCENARIO=bad-boot     does not boot: hosts fall back, rollout halts",
            "  Ctrl-C stops everything.",
            "=" * 64,
            "",
        ]
        say("devstack", "\n".join(lines))

    def supervise(self) -> int:
        while not self.stop.wait(0.3):
            for child in list(self.children):
                rc = child.poll()
                if rc is None or child.proc is None:
                    continue
                if child.critical:
                    say("devstack", f"{child.name} exited with code {rc}; stopping the stack")
                    self.exit_code = 1
                    return self.exit_code
                if child.next_start == 0.0:
                    self.agent_exited(child, rc)
                elif time.monotonic() >= child.next_start:
                    child.next_start = 0.0
                    child.start()
        return self.exit_code

    def agent_exited(self, child: Child, rc: int) -> None:
        host: Path = child.host  # type: ignore[attr-defined]
        i: int = child.index  # type: ignore[attr-defined]
        child.restarts += 1
        if rc in (EXIT_NOT_REGISTERED, EXIT_UNAUTHORIZED) and child.restarts <= 3:
            # The server no longer knows this host (database reset): register it again.
            say("devstack", f"{child.name}: credential rejected (exit {rc}); registering again")
            shutil.rmtree(host / "state", ignore_errors=True)
            (host / "state").mkdir(parents=True, exist_ok=True)
            if not self.register(i, host, self.token):
                self.children.remove(child)
                return
        if child.restarts > 20:
            say("devstack", f"{child.name} exited with code {rc} {child.restarts} times; giving up on it")
            self.children.remove(child)
            return
        delay = min(2 ** min(child.restarts, 5), 30)
        say("devstack", f"{child.name} exited with code {rc}; restarting in {delay}s")
        child.next_start = time.monotonic() + delay

    # ---------------------------------------------------------------- tear-down

    def shutdown(self) -> None:
        """Stop every child and the services this devstack started, then say so.  Signals arriving
        meanwhile change nothing; nothing is printed until everything is stopped (stdout may be a
        pipe nobody reads any more)."""
        notes = []
        if self.stop.signum is not None:
            notes.append(f"{signal.Signals(self.stop.signum).name}: stopping")
        running = [c for c in reversed(self.children) if c.alive()]
        for c in running:                      # agents first, then beat, worker, web
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        stubborn = [c for c in running if not c.wait(max(0.1, deadline - time.monotonic()))]
        for c in stubborn:
            notes.append(f"{c.name} ignored SIGTERM; killing its process group")
            c.signal(signal.SIGKILL)
        for c in stubborn:
            if not c.wait(5):
                assert c.proc is not None
                notes.append(f"{c.name}: processes {group_members(c.proc.pid)} survived SIGKILL")
        if running:
            notes.append("stopped " + ", ".join(f"{c.name} (pid {c.proc.pid})" for c in running if c.proc))
        if self.pidfile is not None:           # else another devstack owns the services
            notes += [f"stopped {name} (pid {pid})" for name, pid in services.stop("dev")]
            with contextlib.suppress(OSError):
                if self.pidfile.read_text().strip() == str(os.getpid()):
                    self.pidfile.unlink()
        for note in notes:
            say("devstack", note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("FLEET_PORT", "8000")))
    parser.add_argument("--hosts", type=int, default=3, help="simulated hosts (0: none)")
    parser.add_argument("--free-ports", action="store_true",
                        help="start Redis and etcd on free ports with throw-away data, not on 6379/2379 "
                             "(several stacks side by side, tests; use with a fresh FLEET_VAR_DIR)")
    args = parser.parse_args()
    stop = StopRequest()
    stop.install()
    processes = web_processes()
    for tool in ("uvicorn", "celery"):
        if not (BIN / tool).exists():
            raise SystemExit(f"devstack: {BIN / tool} is missing: run with .venv/bin/python after `make deps`")
    if shutil.which("redis-server") is None and not os.environ.get("REDIS_URL"):
        raise SystemExit("devstack: redis-server is missing: run `make deps`")
    stack = Stack(args, stop, processes)
    try:
        return stack.run()
    except Stopping:
        return stack.exit_code
    except SystemExit as exc:
        if isinstance(exc.code, str):
            say("devstack", exc.code)
            return 1
        return int(exc.code or 0)
    finally:
        stack.shutdown()
        stop.hold()


if __name__ == "__main__":
    sys.exit(main())
