"""The agent daemon: ``Agent.startup()``, ``main_loop()``, ``shutdown()`` (uvicorn-style).

One session = connect, send ``hello``, wait for the ``policy`` frame, apply it (update.conf +
state dir, signing key pin), acknowledge it with a ``policy_applied`` event, settle what the last
boot means for a pending update (agent/boot.py), then heartbeat with ``status`` frames while
answering pings, applying later policies, running commands and updates (agent/updater.py, in the
background).  ``decide_reboot()`` is the one place that decides a reboot (agent/reboot.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable
from datetime import datetime

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent import apply as cloudapply
from agent import boot, keys, locksmith, protocol, reboot
from agent import disk as gptdisk
from agent.config import (
    AGENT_VERSION,
    DEFAULT_HEARTBEAT,
    EXIT_DISK_MISSING,
    EXIT_HANDSHAKE_TIMEOUT,
    EXIT_OK,
    EXIT_SERVER_UNREACHABLE,
    EXIT_UNAUTHORIZED,
    POLICY_TIMEOUT,
    AgentError,
    Config,
    clear_lock_file,
    load_etcd_settings,
    load_lock_file,
    load_state,
    save_lock_file,
    save_state,
    store_etcd_policy,
)
from agent.connection import AuthRejected, Backoff, Connection, State, close_code, is_auth_close, is_rate_limited_close
from agent.host import DiskMissing
from agent.updater import NEED_REBOOT, UpdateEngine
from agent.window import parse_window

log = logging.getLogger("agent")

# What a session ended with.
SESSION_EXIT = "exit"          # we were asked to stop
SESSION_DONE = "done"          # --once finished
SESSION_REBOOT = "reboot"      # simulated reboot: reconnect right away with a new boot id
SESSION_DROPPED = "dropped"    # the server closed or the network failed: back off


STABLE_SECONDS = 60.0          # READY this long counts as a good connection (backoff resets)

LOCK_RETRY = (5.0, 10.0)       # a failed lock attempt is retried after a random delay in this range
RELEASE_BACKOFF = (5.0, 300.0) # releasing the lock after boot: 5 s doubling to 5 min
ETCD_PROBE_TIMEOUT = 2.0       # best-effort: "etcd answers" means a read within this time


class HandshakeTimeout(Exception):
    pass


class Agent:
    def __init__(self, config: Config, once: bool = False, clock: Callable[[], datetime] | None = None):
        self.config = config
        self.once = once
        self.host = config.host()
        self.clock = clock or self.host.now            # reboot windows (tests pass a controlled clock)
        self.lock_retry = LOCK_RETRY
        self.release_backoff = RELEASE_BACKOFF
        self.etcd_probe_timeout = ETCD_PROBE_TIMEOUT   # lock calls get twice as long
        self._deciding = asyncio.Lock()
        self._release_task: asyncio.Task | None = None
        self._last_wait: dict[str, tuple] = {}         # per event kind, the last waiting reason sent
        self.backoff = Backoff()
        self.state = load_state(config.state_dir)
        self.heartbeat = config.heartbeat_override or DEFAULT_HEARTBEAT
        self.should_exit: asyncio.Event | None = None
        self.conn: Connection | None = None
        self.seq = 0
        self._policy_event: asyncio.Event | None = None
        self._ready_at: float | None = None
        self.engine = UpdateEngine(self.host, config.state_dir, self.report_update_status, self.emit)
        self.outbox: list[str] = []             # events that could not be sent yet (sent after the next hello)
        self._reboot_wanted: asyncio.Event | None = None
        self._reboot_timer: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        self.should_exit = asyncio.Event()
        self._reboot_wanted = asyncio.Event()
        with self.capture_signals():
            self.startup()
            try:
                await self.main_loop()
            finally:
                await self.shutdown()
        return EXIT_OK

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.handle_exit, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int) -> None:
        log.info("received %s, shutting down", signal.Signals(sig).name)
        assert self.should_exit is not None
        self.should_exit.set()

    def startup(self) -> None:
        try:
            self.host.check_disk()
        except DiskMissing as exc:
            raise AgentError(str(exc), EXIT_DISK_MISSING) from None
        log.info("fleet agent %s starting: host %s, server %s, disk %s, root %s", AGENT_VERSION,
                 self.config.host_id, self.config.ws_url, self.config.disk, self.config.root)

    async def shutdown(self) -> None:
        await self.engine.cancel()
        for task in (self._reboot_timer, self._release_task):
            if task is not None:
                task.cancel()
        if self.conn is not None:
            await self.conn.close(1000, "agent shutting down")
        log.info("fleet agent stopped")

    async def main_loop(self) -> None:
        assert self.should_exit is not None
        while not self.should_exit.is_set():
            try:
                outcome = await self.session()
            except AuthRejected as exc:
                if self.once:
                    raise AgentError(f"{exc}; register again with a new token", EXIT_UNAUTHORIZED) from None
                delay = self.backoff.auth_delay()
                log.error("%s; not retrying at full speed", exc)
            except HandshakeTimeout as exc:
                if self.once:
                    raise AgentError(str(exc), EXIT_HANDSHAKE_TIMEOUT) from None
                delay = self.backoff.next_delay()
                log.warning("%s", exc)
            except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidHandshake, InvalidURI) as exc:
                if is_auth_close(exc):
                    if self.once:
                        raise AgentError(f"the server closed the connection: credential not accepted "
                                         f"({close_code(exc)}); register again", EXIT_UNAUTHORIZED) from None
                    delay = self.backoff.auth_delay()
                    log.error("server closed with %s (%s); not retrying at full speed", close_code(exc),
                              "replaced by a newer connection" if close_code(exc) == protocol.CLOSE_REPLACED
                              else "credential not accepted")
                else:
                    if self.once:
                        raise AgentError(f"cannot talk to the server at {self.config.ws_url}: "
                                         f"{type(exc).__name__}: {exc}", EXIT_SERVER_UNREACHABLE) from None
                    delay = self.backoff.next_delay()
                    log.warning("connection failed: %s: %s", type(exc).__name__, exc)
            else:
                if outcome in (SESSION_EXIT, SESSION_DONE):
                    return
                if outcome == SESSION_REBOOT:
                    self.backoff.reset()
                    continue
                # Only a connection that stayed up for a while resets the backoff: a server that
                # accepts and drops us right away must not be hammered.
                if self._ready_at is not None and \
                        asyncio.get_running_loop().time() - self._ready_at >= STABLE_SECONDS:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
            finally:
                if self.conn is not None and self.conn.state is not State.DISCONNECTED:
                    await self.conn.close(1000, "session ended")
            log.info("reconnecting in %.1fs", delay)
            try:
                await asyncio.wait_for(self.should_exit.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    # -- one session ------------------------------------------------------------------------------
    async def session(self) -> str:
        assert self.should_exit is not None
        self.conn = conn = Connection(self.config.ws_url, self.config.credential)
        self._ready_at = None
        await conn.open()
        self._policy_event = asyncio.Event()
        await conn.send(await self.hello_frame())
        stop = asyncio.ensure_future(self.should_exit.wait())
        assert self._reboot_wanted is not None
        rebooting = asyncio.ensure_future(self._reboot_wanted.wait())
        heartbeat: asyncio.Task | None = None
        recv: asyncio.Task | None = None
        try:
            deadline = asyncio.get_running_loop().time() + POLICY_TIMEOUT
            while True:
                if heartbeat is None and self._policy_event.is_set():
                    conn.transition(State.READY, f"policy revision {self.state.get('policy_revision')} applied")
                    self._ready_at = asyncio.get_running_loop().time()
                    await self.send_status()
                    await self.flush_outbox()
                    await self.after_boot()
                    if self.once:
                        await conn.close(1000, "--once done")
                        return SESSION_DONE
                    heartbeat = asyncio.ensure_future(self.heartbeat_loop())
                timeout = None
                if heartbeat is None:
                    timeout = deadline - asyncio.get_running_loop().time()
                    if timeout <= 0:
                        raise HandshakeTimeout(f"no policy from the server within {POLICY_TIMEOUT:.0f}s")
                if recv is None:
                    recv = asyncio.ensure_future(conn.recv())
                waiting = {recv, stop, rebooting} | ({heartbeat} if heartbeat else set())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    await conn.close(1000, "agent shutting down")
                    return SESSION_EXIT
                if rebooting in done:
                    return await self.do_reboot()
                if heartbeat is not None and heartbeat in done:
                    heartbeat.result()        # re-raises the send failure
                if recv not in done:
                    continue
                text = recv.result()
                recv = None
                action = await self.handle_frame(text)
                if action == SESSION_REBOOT:
                    return await self.do_reboot()
        except ConnectionClosed as exc:
            if is_auth_close(exc):
                raise
            if close_code(exc) == protocol.CLOSE_TRY_AGAIN_LATER:
                log.warning("server busy (%s, try again later); reconnecting after the backoff",
                            protocol.CLOSE_TRY_AGAIN_LATER)
            if is_rate_limited_close(exc):
                log.error("server closed with %s (too many frames); backing off", protocol.CLOSE_RATE_LIMITED)
                self.backoff.rate_limited()
                self._ready_at = None         # a long session must not reset this backoff
            conn.transition(State.DISCONNECTED, f"server closed: {exc}")
            return SESSION_DROPPED
        finally:
            for task in (stop, rebooting, heartbeat, recv):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # a receive that ended with the socket we closed: expected, not logged

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await self.send_status()

    # -- frames ----------------------------------------------------------------------------------
    async def hello_frame(self) -> str:
        partitions = await asyncio.to_thread(self.host.partitions)
        conf = self.host.update_conf()
        fields = dict(
            machine_id=self.config.machine_id,
            boot_id=await asyncio.to_thread(self.host.boot_id),
            hostname=self.config.hostname or self.host.hostname(),
            agent_version=AGENT_VERSION,
            version=self.host.active_version(partitions),
            partitions=partitions,
            update_status=self.engine.status,
            group=conf.get("GROUP") or None,
            reboot_strategy=conf.get("REBOOT_STRATEGY") or None,
        )
        if isinstance(self.state.get("policy_revision"), int):
            fields["policy_revision"] = self.state["policy_revision"]
        return protocol.encode("hello", "agent", **fields)

    async def send(self, frame_type: str, **fields) -> None:
        assert self.conn is not None
        await self.conn.send(protocol.encode(frame_type, "agent", **fields))

    async def send_status(self) -> None:
        partitions = await asyncio.to_thread(self.host.partitions)
        synced = (await asyncio.to_thread(cloudapply.load_state, self.config.state_dir)).get("seen")
        self.seq += 1
        revision = self.state.get("policy_revision")
        # What was applied, so that the server resends what a lost push should have brought.
        credentials = (self.state.get("policy") or {}).get("etcd_credentials_revision")
        applied = {**({"policy_revision": revision} if isinstance(revision, int) else {}),
                   **({"cloud_config_revision": synced} if isinstance(synced, int) else {}),
                   **({"etcd_credentials_revision": credentials} if isinstance(credentials, int) else {})}
        await self.send("status", **self.engine.fields(), version=self.host.active_version(partitions),
                        partitions=partitions, seq=self.seq, **applied)
        log.debug("sent status #%d", self.seq)

    async def _send_soft(self, text: str) -> bool:
        """Send if connected; False when there is no usable connection (the caller decides what to keep)."""
        if self.conn is None or self.conn.ws is None or self.conn.state is State.DISCONNECTED:
            return False
        try:
            await self.conn.send(text)
            return True
        except (ConnectionClosed, OSError):
            return False

    async def report_update_status(self, fields: dict) -> None:
        """The update engine's status report (each transition, throttled download progress)."""
        extra: dict = {}
        if fields["update_status"] != "DOWNLOADING":
            partitions = await asyncio.to_thread(self.host.partitions)
            extra = {"version": self.host.active_version(partitions), "partitions": partitions}
        self.seq += 1
        await self._send_soft(protocol.encode("status", "agent", **fields, **extra, seq=self.seq))

    async def emit(self, kind: str, data: dict, message: str | None = None) -> None:
        """Send an event; kept in the outbox and sent after the next hello if the connection is down."""
        fields = {"kind": kind, "data": data, "at": round(time.time(), 3),
                  **({"message": message[:1000]} if message else {})}
        text = protocol.encode("event", "agent", **fields)
        log.info("event %s %s", kind, data)
        if not await self._send_soft(text):
            self.outbox.append(text)
            del self.outbox[:-100]

    async def flush_outbox(self) -> None:
        while self.outbox:
            if not await self._send_soft(self.outbox[0]):
                return
            self.outbox.pop(0)

    async def handle_frame(self, text: str | bytes) -> str | None:
        try:
            msg = protocol.decode(text, "server")
        except protocol.ProtocolError as exc:
            log.warning("ignored a bad frame from the server (%s): %s", exc.code, exc.message)
            return None
        kind = msg["type"]
        if kind == "policy":
            await self.apply_policy(msg)
        elif kind == "ping":
            await self.send("pong", **({"nonce": msg["nonce"]} if "nonce" in msg else {}))
        elif kind == "error":
            log.error("server error %s: %s", msg["code"], msg["message"])
        elif kind == "command":
            return await self.handle_command(msg)
        elif kind == "update":
            if not self.engine.start(msg, self.on_update_installed):
                log.info("update %s offered again while it is in progress (%s); ignored", msg["version"],
                         self.engine.status)
        return None

    # -- updates, reboots, boots ------------------------------------------------------------------
    async def on_update_installed(self) -> None:
        """The engine wrote and prioritized the new partition: persist it, then decide the reboot."""
        inst = self.engine.installed or {}
        pending = {"kind": "update", "phase": "installed", "version": inst["version"], "partition": inst["partition"],
                   "label": inst["label"], "rollout": inst.get("rollout"),
                   "previous_version": inst.get("previous_version"),
                   "previous_partition": inst.get("previous_partition"),
                   "boot_id": await asyncio.to_thread(self.host.boot_id)}
        await asyncio.to_thread(boot.save_pending, self.config.state_dir, pending)
        await self.decide_reboot()

    async def decide_reboot(self) -> None:
        """THE place a reboot after an update is decided and carried out (strategy, window, etcd lock)."""
        async with self._deciding:
            await self._decide_reboot()

    def _policy(self) -> dict:
        return self.state.get("policy") or {}

    def _strategy(self) -> str | None:
        # A host's own cloud-config (coreos.update.reboot_strategy) wins over the group's policy,
        # as it does for locksmithd on a host configured by coreos-cloudinit.
        return (cloudapply.update_overrides(self.config.state_dir).get("REBOOT_STRATEGY")
                or self._policy().get("reboot_strategy") or self.host.update_conf().get("REBOOT_STRATEGY") or None)

    def _window_settings(self) -> tuple[str | None, str | None]:
        local = cloudapply.locksmith_overrides(self.config.state_dir)
        if local.get("window_start") or local.get("window_length"):
            return local.get("window_start"), local.get("window_length")
        policy = self._policy()
        return policy.get("reboot_window_start"), policy.get("reboot_window_length")

    def _locksmith(self, settings=None) -> tuple[locksmith.Locksmith, object]:
        settings = settings or load_etcd_settings(self.config.state_dir)
        client = settings.client(timeout=self.etcd_probe_timeout * 2)
        return locksmith.Locksmith(client, settings.group, settings.prefix, default_max=max(settings.max, 0)), client

    def _probe_etcd(self) -> tuple[bool, str]:
        """best-effort: do the policy's endpoints answer (a read of the group's semaphore key)?"""
        settings = load_etcd_settings(self.config.state_dir)
        if settings is None or not settings.endpoints:
            return False, "no etcd endpoints configured"
        try:
            client = settings.client(timeout=self.etcd_probe_timeout)
        except Exception as exc:
            return False, f"etcd client: {exc}"
        try:
            client.get(locksmith.group_key(settings.group, settings.prefix))
            return True, "etcd answered"
        except Exception as exc:
            return False, f"etcd did not answer: {locksmith._describe(exc)}"
        finally:
            client.close()

    def _schedule_decision(self, delay: float) -> None:
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
        self._reboot_timer = asyncio.ensure_future(self._decide_later(delay))

    def _retry_delay(self) -> float:
        low, high = self.lock_retry
        return random.uniform(low, high)

    async def _emit_waiting(self, kind: str, data: dict, key: tuple) -> None:
        """A waiting event, sent once per distinct reason (retries do not flood the log)."""
        if self._last_wait.get(kind) == key:
            return
        self._last_wait[kind] = key
        await self.emit(kind, data)

    async def _decide_reboot(self) -> None:
        if self._reboot_timer is not None and self._reboot_timer is not asyncio.current_task():
            self._reboot_timer.cancel()
        self._reboot_timer = None
        policy = self._policy()
        strategy = self._strategy()
        try:
            window = parse_window(*self._window_settings())
        except ValueError:
            window = None
        endpoints = policy.get("etcd_endpoints") or None
        etcd_up, probe_reason = None, None
        if (strategy or reboot.DEFAULT_STRATEGY) == "best-effort" and endpoints and \
                (window is None or window.contains(self.clock())):
            etcd_up, probe_reason = await asyncio.to_thread(self._probe_etcd)
        decision = reboot.decide(strategy, endpoints, window, self.clock(), etcd_up=etcd_up)
        inst = self.engine.installed or {}
        data = {"version": inst.get("version"), "rollout": inst.get("rollout"), "strategy": decision.strategy,
                "reason": decision.reason}
        log.info("reboot decision: %s (%s)", decision.action, decision.reason)
        if decision.strategy == "best-effort" and decision.path is not None:
            await self.emit("reboot_path", {"strategy": decision.strategy, "path": decision.path,
                                            "reason": probe_reason or decision.reason})
        if decision.action == reboot.NOW:
            self._last_wait.clear()
            await self.emit("rebooting", data)
            self.request_reboot()
        elif decision.action == reboot.WAIT_WINDOW:
            await self._emit_waiting("reboot_waiting", data, (decision.strategy, "outside_window"))
            if effective_lock(decision.strategy, endpoints):
                await self._emit_waiting("lock_waiting", {"reason": "outside_window", "holders": [],
                                                          "rollout": data["rollout"], "strategy": decision.strategy,
                                                          "window": str(window)}, ("outside_window",))
            # Look again soon (the clock may jump; a policy may change the window), at the latest
            # when the window opens.
            self._schedule_decision(min(decision.delay + 0.5, self._retry_delay()))
        elif decision.action == reboot.WAIT_LOCK:
            await self._emit_waiting("reboot_waiting", data, (decision.strategy, "no_endpoints"))
            await self._emit_waiting("lock_waiting", {"reason": "etcd_unavailable", "holders": [],
                                                      "rollout": data["rollout"], "strategy": decision.strategy,
                                                      "message": decision.reason}, ("etcd_unavailable",))
        elif decision.action == reboot.LOCK:
            await self._lock_and_reboot(decision, data)
        else:
            self._last_wait.clear()
            await self.emit("reboot_needed", data)

    async def _lock_and_reboot(self, decision: reboot.Decision, data: dict) -> None:
        settings = load_etcd_settings(self.config.state_dir)
        holder = self.config.machine_id
        try:
            ls, client = self._locksmith(settings)
        except Exception as exc:
            await self._emit_waiting("lock_waiting", {"reason": "etcd_unavailable", "holders": [],
                                                      "rollout": data["rollout"], "message": f"etcd client: {exc}"},
                                     ("etcd_unavailable",))
            self._schedule_decision(self._retry_delay())
            return
        try:
            sem = await asyncio.to_thread(ls.lock, holder)
        except locksmith.LockError as exc:
            reason = "no_slots" if exc.code == locksmith.NO_SLOTS else "etcd_unavailable"
            # The rollout tells the server which update waits: its timeout does not run while
            # another host holds the lock (Rollout.advance).
            await self._emit_waiting("lock_waiting", {"reason": reason, "holders": exc.holders, "key": ls.key,
                                                      "rollout": data["rollout"], "message": str(exc)},
                                     (reason, tuple(exc.holders)))
            log.info("reboot lock not taken (%s): %s; retrying", exc.code, exc)
            self._schedule_decision(self._retry_delay())    # re-decides: window, strategy, etcd
            return
        finally:
            client.close()
        # Persist "I hold the lock" before rebooting: the next boot releases it.
        await asyncio.to_thread(save_lock_file, self.config.state_dir, {
            "holder": holder, "key": ls.key, "group": settings.group, "prefix": settings.prefix,
            "endpoints": settings.endpoints, "boot_id": await asyncio.to_thread(self.host.boot_id),
            "at": round(time.time(), 3)})
        self._last_wait.clear()
        await self.emit("lock_acquired", {"holder": holder, "group": settings.group, "key": ls.key,
                                          "rollout": data["rollout"], "semaphore": sem.semaphore, "max": sem.max,
                                          "holders": sem.holders})
        await self.emit("rebooting", {**data, "lock": ls.key})
        self.request_reboot()

    async def _decide_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.engine.status == NEED_REBOOT:
            await self.decide_reboot()

    # -- releasing the lock after a boot ------------------------------------------------------------
    def start_release(self) -> None:
        """Release the reboot lock held across the last reboot (background, with backoff)."""
        if self._release_task is not None and not self._release_task.done():
            return
        if load_lock_file(self.config.state_dir) is None:
            return
        self._release_task = asyncio.ensure_future(self._release_loop())

    async def _release_loop(self) -> None:
        delay, cap = self.release_backoff
        while True:
            held = await asyncio.to_thread(load_lock_file, self.config.state_dir)
            if held is None:
                return
            try:
                sem = await asyncio.to_thread(self._release_once, held)
            except Exception as exc:   # LockError, bad settings, …: keep trying
                log.warning("cannot release the reboot lock %s yet: %s; retrying in %.0fs", held.get("key"), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
                continue
            await asyncio.to_thread(clear_lock_file, self.config.state_dir)
            await self.emit("lock_released", {"holder": held["holder"], "group": held.get("group"),
                                              "key": held.get("key"), "semaphore": sem.semaphore, "max": sem.max,
                                              "holders": sem.holders})
            return

    def _release_once(self, held: dict) -> locksmith.Semaphore:
        settings = load_etcd_settings(self.config.state_dir)
        if settings is None or not (settings.endpoints or held.get("endpoints")):
            raise locksmith.LockError(locksmith.ETCD_UNAVAILABLE, "no etcd endpoints to release the lock at")
        if not settings.endpoints:
            settings.endpoints = held["endpoints"]
        # The key we locked (the group or prefix may have changed since).
        settings.group, settings.prefix = held.get("group"), held.get("prefix") or ""
        ls, client = self._locksmith(settings)
        try:
            return ls.unlock(held["holder"])
        finally:
            client.close()

    def request_reboot(self) -> None:
        assert self._reboot_wanted is not None
        self._reboot_wanted.set()

    async def do_reboot(self) -> str:
        """Close the session and reboot: simulated on a disk image, ``systemctl reboot`` on a real host."""
        assert self._reboot_wanted is not None and self.should_exit is not None
        self._reboot_wanted.clear()
        await self.engine.cancel()
        if self.conn is not None:
            await self.conn.close(1000, "rebooting")
        boot_id = await asyncio.to_thread(self.host.reboot)
        if boot_id is None:                   # a real reboot: systemd stops us shortly
            try:
                await asyncio.wait_for(self.should_exit.wait(), timeout=300)
                return SESSION_EXIT
            except asyncio.TimeoutError:
                log.error("the host did not reboot within 300s; carrying on")
                return SESSION_REBOOT
        self.engine.reset()
        log.info("simulated reboot done, new boot id %s; reconnecting", boot_id)
        return SESSION_REBOOT

    async def after_boot(self) -> None:
        """Settle a pending update or rollback against this boot (once it is settled the file is gone)."""
        try:
            result = await asyncio.to_thread(boot.assess, self.host, self.config.state_dir, self.config.health_cmd,
                                             self.config.health_timeout)
        except (gptdisk.GptError, OSError) as exc:
            log.error("cannot assess the boot: %s", exc)
            return
        p = result.pending
        if result.outcome not in (boot.WAIT_REBOOT, boot.UNHEALTHY):
            await self._release_if_rebooted()
        if result.outcome == boot.NOTHING:
            return
        if result.outcome == boot.WAIT_REBOOT:
            if self.engine.status != NEED_REBOOT and p.get("kind") == "update":
                self.engine.restore_need_reboot(p)
                await self.report_update_status(self.engine.fields())
                await self.decide_reboot()
            elif p.get("kind") == "rollback":
                self.request_reboot()
            return
        if result.outcome == boot.HEALTHY:
            await self.send_status()  # the partition marked good is on record before the outcome is
            await self.emit("booted_new_version", {"version": p["version"], "previous_version": p.get("previous_version"),
                                                   "rollout": p.get("rollout"), "partition": p.get("label")})
            await asyncio.to_thread(boot.clear_pending, self.config.state_dir)
        elif result.outcome == boot.UNHEALTHY:
            await self.emit("health_check_failed", {"version": p["version"], "reason": result.reason,
                                                    "rollout": p.get("rollout"), "partition": p.get("label")},
                            result.reason)
            log.error("rebooting to fall back from %s: %s", p["version"], result.reason)
            self.request_reboot()
        elif result.outcome == boot.ROLLED_BACK:
            if p.get("kind") == "rollback":
                data = {"reason": result.reason, "failed_version": p.get("previous_version"),
                        "version": result.version, "rollout": p.get("rollout")}
            else:
                data = {"reason": result.reason, "failed_version": p.get("version"), "version": result.version,
                        "rollout": p.get("rollout")}
            await self.send_status()
            await self.emit("rollback", data, result.reason)
            await asyncio.to_thread(boot.clear_pending, self.config.state_dir)
        elif result.outcome == boot.ROLLBACK_FAILED:
            await self.emit("update_error", {"code": "rollback_failed", "message": result.reason,
                                             "rollout": p.get("rollout"), "version": p.get("version")}, result.reason)
            await asyncio.to_thread(boot.clear_pending, self.config.state_dir)

    async def _release_if_rebooted(self) -> None:
        """A lock taken in an earlier boot is released once this boot is settled (good or rolled back)."""
        held = await asyncio.to_thread(load_lock_file, self.config.state_dir)
        if held is None:
            return
        if held.get("boot_id") == await asyncio.to_thread(self.host.boot_id):
            return                 # taken in this boot: the reboot has not happened yet
        self.start_release()

    async def operator_unlock(self, ref: dict) -> None:
        """``command unlock``: give back this host's slot in the reboot semaphore now."""
        held = await asyncio.to_thread(load_lock_file, self.config.state_dir)
        settings = load_etcd_settings(self.config.state_dir)
        if held is None:
            held = {"holder": self.config.machine_id, "group": settings.group if settings else None,
                    "prefix": settings.prefix if settings else "", "endpoints": settings.endpoints if settings else []}
        try:
            sem = await asyncio.to_thread(self._release_once, held)
        except Exception as exc:
            message = f"cannot release the reboot lock: {exc}"
            await self.emit("update_error", {"code": "unlock_failed", "message": message, **ref}, message)
            return
        await asyncio.to_thread(clear_lock_file, self.config.state_dir)
        await self.emit("lock_released", {**ref, "holder": held["holder"], "group": held.get("group"),
                                          "semaphore": sem.semaphore, "max": sem.max, "holders": sem.holders})

    async def operator_rollback(self, ref: dict) -> str | None:
        """``command rollback``: boot the other partition if it holds a good, successful /usr."""
        def prepare() -> dict:
            disk_path = self.host.disk
            table = gptdisk.read_gpt(disk_path)
            active = self.host.active_partition()
            if active is None:
                raise ValueError("cannot tell which USR partition is running")
            other = gptdisk.other_usr(table, active)
            release = gptdisk.read_release(disk_path, other.number)
            if not other.successful or release is None:
                raise ValueError(f"{other.label} is not a known-good partition (successful="
                                 f"{int(other.successful)}, release file {'found' if release else 'missing'})")
            current = gptdisk.read_release(disk_path, active)
            pending = {"kind": "rollback", "phase": "installed", "partition": other.number, "label": other.label,
                       "version": release.get("COREOS_RELEASE_VERSION"), "rollout": None,
                       "previous_version": current.get("COREOS_RELEASE_VERSION") if current else None,
                       "previous_partition": active, "boot_id": self.host.boot_id(),
                       "reason": "operator requested"}
            boot.save_pending(self.config.state_dir, pending)
            gptdisk.modify(disk_path, gptdisk.prioritize, other.number)
            return pending

        if self.engine.busy:
            message = f"an update ({self.engine.status}) is in progress; try the rollback again when it is done"
            await self.emit("update_error", {"code": "rollback_unavailable", "message": message, **ref}, message)
            return None
        try:
            pending = await asyncio.to_thread(prepare)
        except (ValueError, gptdisk.GptError) as exc:
            message = f"cannot roll back: {exc}"
            await self.emit("update_error", {"code": "rollback_unavailable", "message": message, **ref}, message)
            return None
        await self.emit("rebooting", {**ref, "reason": "operator requested rollback", "version": pending["version"]})
        return SESSION_REBOOT

    async def apply_policy(self, policy: dict) -> None:
        channel, strategy, group = policy["channel"], policy["reboot_strategy"], policy["group"]
        # coreos.update of the applied cloud-config wins over the policy (agent/apply.py).
        overrides = await asyncio.to_thread(cloudapply.update_overrides, self.config.state_dir)
        changed = await asyncio.to_thread(self.host.rewrite_update_conf,
                                          {"GROUP": channel, "REBOOT_STRATEGY": strategy, **overrides})
        start, length = policy.get("reboot_window_start"), policy.get("reboot_window_length")
        try:
            window = parse_window(start, length)
        except ValueError as exc:
            log.warning("policy carries an invalid reboot window, ignoring it: %s", exc)
            window = None
        pin = await asyncio.to_thread(keys.apply_policy_key, self.config.state_dir, policy)
        public = await asyncio.to_thread(store_etcd_policy, self.config.state_dir, policy, self.config.org)
        self.state["policy_revision"] = policy["revision"]
        self.state["policy"] = {k: v for k, v in public.items() if k != "type"}
        await asyncio.to_thread(save_state, self.config.state_dir, self.state)
        interval = policy.get("heartbeat_interval")
        self.heartbeat = self.config.heartbeat_override or (float(interval) if interval and interval > 0
                                                           else DEFAULT_HEARTBEAT)
        log.info("applied policy revision %d: group=%s channel=%s reboot_strategy=%s window=%s (update.conf %s)",
                 policy["revision"], group, channel, strategy, window or "none", "rewritten" if changed else "unchanged")
        await self.send("event", kind="policy_applied",
                        data={"revision": policy["revision"], "channel": channel,
                              "reboot_strategy": strategy, "group": group})
        if pin.outcome == keys.PINNED:
            log.info("pinned the release signing key %s", pin.key_id)
            await self.emit("signing_key_pinned", {"key_id": pin.key_id})
        elif pin.outcome == keys.ROTATED:
            log.info("signing key rotated from %s to %s (endorsed)", pin.previous_key_id, pin.key_id)
            await self.emit("signing_key_rotated", {"key_id": pin.key_id, "previous_key_id": pin.previous_key_id})
        elif pin.outcome == keys.MISMATCH:
            log.error("%s", pin.message)
            await self.emit("update_error", {"code": "signing_key_mismatch", "message": pin.message,
                                             "key_id": pin.key_id,
                                             "offered_key_id": policy.get("signing_key_id")}, pin.message)
        await self.sync_cloud_config(policy)
        assert self._policy_event is not None
        self._policy_event.set()
        if self.engine.status == NEED_REBOOT and not self.engine.busy:
            await self.decide_reboot()             # the strategy or window may have changed

    async def sync_cloud_config(self, policy: dict) -> None:
        """Fetch and apply the effective cloud-config when the policy's revision moved; report
        ``cloud_config_applied`` {revision, errors}.  A failed fetch is retried on the next policy."""
        try:
            result = await asyncio.to_thread(cloudapply.sync, self.host, self.config.state_dir, self.config.server,
                                             self.config.credential, policy)
        except Exception as exc:  # network, HTTP or a malformed answer: keep running, try again later
            log.warning("cloud-config not fetched: %s: %s", type(exc).__name__, exc)
            return
        if result is None:
            return
        log.info("applied cloud-config revision %s: %d change(s), %d command(s), %d error(s)", result.revision,
                 len(set(result.changed)), len(result.commands), len(result.errors))
        await self.emit("cloud_config_applied", result.as_event(),
                        "; ".join(result.errors)[:1000] if result.errors else None)

    async def handle_command(self, msg: dict) -> str | None:
        command, cid = msg["command"], msg.get("id")
        ref = {"command": command, **({"id": cid} if cid else {})}
        if command == "check-update":
            log.info("command check-update: reporting status")
            await self.send_status()
            return None
        if command == "reboot":
            if not self.host.simulated:
                log.warning("command reboot: rebooting the real host")
            await self.send("event", kind="rebooting", data=ref)
            return SESSION_REBOOT
        if command == "rollback":
            return await self.operator_rollback(ref)
        if command == "unlock":
            await self.operator_unlock(ref)
            return None
        log.info("command %s is not supported by this agent yet", command)
        await self.send("event", kind="command_unsupported", message=f"command {command} is not supported yet",
                        data=ref)
        return None


def effective_lock(strategy: str, endpoints) -> bool:
    """Would this strategy take the etcd lock (when inside the window)?"""
    return strategy == "etcd-lock" or (strategy == "best-effort" and bool(endpoints))
