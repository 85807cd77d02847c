"""The agent daemon: ``Agent.startup()``, ``main_loop()``, ``shutdown()`` (uvicorn-style).

One session = connect, send ``hello``, wait for the ``policy`` frame, apply it (update.conf +
state dir), acknowledge it with a ``policy_applied`` event, then heartbeat with ``status`` frames
while answering pings, logging errors, applying later policies and running commands.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agent import protocol
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
    load_state,
    save_state,
)
from agent.connection import AuthRejected, Backoff, Connection, State, is_auth_close
from agent.host import DiskMissing
from agent.window import parse_window

log = logging.getLogger("agent")

# What a session ended with.
SESSION_EXIT = "exit"          # we were asked to stop
SESSION_DONE = "done"          # --once finished
SESSION_REBOOT = "reboot"      # simulated reboot: reconnect right away with a new boot id
SESSION_DROPPED = "dropped"    # the server closed or the network failed: back off


STABLE_SECONDS = 60.0          # READY this long counts as a good connection (backoff resets)


class HandshakeTimeout(Exception):
    pass


class Agent:
    def __init__(self, config: Config, once: bool = False):
        self.config = config
        self.once = once
        self.host = config.host()
        self.backoff = Backoff()
        self.state = load_state(config.state_dir)
        self.heartbeat = config.heartbeat_override or DEFAULT_HEARTBEAT
        self.should_exit: asyncio.Event | None = None
        self.conn: Connection | None = None
        self.seq = 0
        self._policy_event: asyncio.Event | None = None
        self._ready_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        self.should_exit = asyncio.Event()
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
                        raise AgentError("the server closed the connection: credential not accepted (4401); "
                                         "register again", EXIT_UNAUTHORIZED) from None
                    delay = self.backoff.auth_delay()
                    log.error("server closed with %s (unauthorized); not retrying at full speed",
                              protocol.CLOSE_UNAUTHORIZED)
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
        heartbeat: asyncio.Task | None = None
        recv: asyncio.Task | None = None
        try:
            deadline = asyncio.get_running_loop().time() + POLICY_TIMEOUT
            while True:
                if heartbeat is None and self._policy_event.is_set():
                    conn.transition(State.READY, f"policy revision {self.state.get('policy_revision')} applied")
                    self._ready_at = asyncio.get_running_loop().time()
                    await self.send_status()
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
                waiting = {recv, stop} | ({heartbeat} if heartbeat else set())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    await conn.close(1000, "agent shutting down")
                    return SESSION_EXIT
                if heartbeat is not None and heartbeat in done:
                    heartbeat.result()        # re-raises the send failure
                if recv not in done:
                    continue
                text = recv.result()
                recv = None
                action = await self.handle_frame(text)
                if action == SESSION_REBOOT:
                    await conn.close(1000, "rebooting")
                    boot_id = await asyncio.to_thread(self.host.reboot)
                    log.info("simulated reboot done, new boot id %s; reconnecting", boot_id)
                    return SESSION_REBOOT
        except ConnectionClosed as exc:
            if is_auth_close(exc):
                raise
            conn.transition(State.DISCONNECTED, f"server closed: {exc}")
            return SESSION_DROPPED
        finally:
            for task in (stop, heartbeat, recv):
                if task is not None and not task.done():
                    task.cancel()

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
            update_status="IDLE",
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
        self.seq += 1
        await self.send("status", update_status="IDLE", version=self.host.active_version(partitions),
                        partitions=partitions, seq=self.seq)
        log.debug("sent status #%d", self.seq)

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
            log.info("update %s offered; installing updates is not implemented yet", msg["version"])
            await self.send("event", kind="update_unsupported", message="this agent cannot install updates yet",
                            data={"version": msg["version"]})
        return None

    async def apply_policy(self, policy: dict) -> None:
        channel, strategy, group = policy["channel"], policy["reboot_strategy"], policy["group"]
        changed = await asyncio.to_thread(self.host.rewrite_update_conf,
                                          {"GROUP": channel, "REBOOT_STRATEGY": strategy})
        start, length = policy.get("reboot_window_start"), policy.get("reboot_window_length")
        try:
            window = parse_window(start, length)
        except ValueError as exc:
            log.warning("policy carries an invalid reboot window, ignoring it: %s", exc)
            window = None
        self.state["policy_revision"] = policy["revision"]
        self.state["policy"] = {k: v for k, v in policy.items() if k != "type"}
        await asyncio.to_thread(save_state, self.config.state_dir, self.state)
        interval = policy.get("heartbeat_interval")
        self.heartbeat = self.config.heartbeat_override or (float(interval) if interval and interval > 0
                                                           else DEFAULT_HEARTBEAT)
        log.info("applied policy revision %d: group=%s channel=%s reboot_strategy=%s window=%s (update.conf %s)",
                 policy["revision"], group, channel, strategy, window or "none", "rewritten" if changed else "unchanged")
        await self.send("event", kind="policy_applied",
                        data={"revision": policy["revision"], "channel": channel,
                              "reboot_strategy": strategy, "group": group})
        assert self._policy_event is not None
        self._policy_event.set()

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
        log.info("command %s is not supported by this agent yet", command)
        await self.send("event", kind="command_unsupported", message=f"command {command} is not supported yet",
                        data=ref)
        return None
