"""The update engine: an explicit state machine from an ``update`` frame to UPDATED_NEED_REBOOT.

    IDLE → CHECKING_FOR_UPDATE → UPDATE_AVAILABLE → DOWNLOADING → VERIFYING → FINALIZING
         → UPDATED_NEED_REBOOT;   any failure → REPORTING_ERROR_EVENT → IDLE

Order of checks (nothing touches the disk until the last step):

1. CHECKING_FOR_UPDATE: version against the active partition (no downgrade unless told), a pinned
   signing key, the Ed25519 signature over (version, size, sha256), size against the inactive
   USR partition.
2. DOWNLOADING: stdlib HTTP(S) into ``<state-dir>/downloads/<sha256>.part``, resuming with
   ``Range: bytes=N-`` after a break (also across agent restarts: the file stays).  A break the
   server may get over (refused, reset, timed out, HTTP 5xx/429, a short body) is retried with
   capped exponential backoff and jitter until the update's deadline (the frame's ``timeout``: what
   is left of the group's update timeout), so an outage of the server shorter than that fails
   nothing; what retrying cannot fix (HTTP 4xx, a bad Content-Range) fails at once.
3. VERIFYING: size and sha256 of the complete file.
4. FINALIZING: mark the inactive partition unbootable, write it in chunks, zero the rest, fsync,
   read back and compare sha256, and only then ``install_prepare`` (tries=1, successful=0,
   prioritize).  A death at any point before that leaves a partition gptprio never boots.

The engine reports through two callbacks the Agent supplies: ``report_status(fields)`` for each
state and ``report_event(kind, data, message)``.  The blocking work runs in threads.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from agent import disk as gptdisk
from agent import keys, signing
from agent.config import AGENT_VERSION
from agent.connection import Backoff

log = logging.getLogger("agent.updater")

IDLE = "IDLE"
CHECKING = "CHECKING_FOR_UPDATE"
AVAILABLE = "UPDATE_AVAILABLE"
DOWNLOADING = "DOWNLOADING"
VERIFYING = "VERIFYING"
FINALIZING = "FINALIZING"
NEED_REBOOT = "UPDATED_NEED_REBOOT"
ERROR = "REPORTING_ERROR_EVENT"

TRANSITIONS: dict[str, tuple[str, ...]] = {
    IDLE: (CHECKING, NEED_REBOOT),
    CHECKING: (AVAILABLE, IDLE, ERROR),
    AVAILABLE: (DOWNLOADING, ERROR, IDLE),
    DOWNLOADING: (VERIFYING, ERROR, IDLE),
    VERIFYING: (FINALIZING, ERROR, IDLE),
    FINALIZING: (NEED_REBOOT, ERROR),
    NEED_REBOOT: (CHECKING, IDLE),
    ERROR: (IDLE,),
}

DOWNLOAD_DIR = "downloads"
CHUNK = 1024 * 1024
READ_CHUNK = 256 * 1024
HTTP_TIMEOUT = 30
DOWNLOAD_BACKOFF = (1.0, 30.0)         # seconds: first delay between download attempts, cap
DOWNLOAD_BACKOFF_ENV = "FLEET_AGENT_DOWNLOAD_BACKOFF"
DEFAULT_UPDATE_TIMEOUT = 3600.0        # an update frame without ``timeout`` (an older server): the server's default
PROGRESS_STEP = 0.05
PROGRESS_SECONDS = 1.0


class UpdateError(Exception):
    """A refused or failed update: ``code`` goes into the ``update_error`` event."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(Exception):
    pass


class AlreadyCurrent(Exception):
    pass


@dataclass(frozen=True)
class Offer:
    version: str
    url: str
    size: int
    sha256: str
    signature: str
    rollout: int | None = None
    allow_downgrade: bool = False
    timeout: float = DEFAULT_UPDATE_TIMEOUT   # seconds from receipt until the server counts the update failed
    received: float = field(default_factory=time.monotonic)

    @classmethod
    def from_frame(cls, msg: dict) -> "Offer":
        timeout = msg.get("timeout")
        return cls(version=msg["version"], url=msg["url"], size=msg["size"], sha256=msg["sha256"].lower(),
                   signature=msg["signature"], rollout=msg.get("rollout"),
                   allow_downgrade=bool(msg.get("allow_downgrade", False)),
                   timeout=float(timeout) if timeout is not None and timeout > 0 else DEFAULT_UPDATE_TIMEOUT)

    @property
    def deadline(self) -> float:
        """When (``time.monotonic``) retrying a broken download stops: the server fails the update then."""
        return self.received + self.timeout


# -- blocking steps (run in threads; usable on their own) ------------------------------------

def file_sha256(path: str | os.PathLike, length: int | None = None, offset: int = 0) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, end = offset, None if length is None else offset + length
        while end is None or pos < end:
            want = CHUNK if end is None else min(CHUNK, end - pos)
            data = os.pread(fd, want, pos)
            if not data:
                break
            h.update(data)
            pos += len(data)
        if end is not None and pos < end:
            raise UpdateError("readback_failed", f"short read at byte {pos} of {path}")
    finally:
        os.close(fd)
    return h.hexdigest()


class _Cut(Exception):
    """The transfer stopped early (connection closed/reset/timeout): retry with Range."""


@dataclass(frozen=True)
class Retry:
    """One failed download attempt that will be retried (what ``download``'s ``on_retry`` gets)."""
    streak: int          # failed attempts in a row without a byte gained (1: the transfer just broke)
    error: str
    delay: float         # seconds until the next attempt
    left: float | None   # seconds until the deadline


def download(url: str, dest: Path, size: int, *, progress: Callable[[int], None] | None = None,
             stop: threading.Event | None = None, deadline: float | None = None,
             backoff: Backoff | None = None, on_retry: Callable[[Retry], None] | None = None,
             clock: Callable[[], float] = time.monotonic, timeout: float = HTTP_TIMEOUT) -> None:
    """Fetch ``url`` into ``dest`` until it holds ``size`` bytes, resuming with Range after breaks.

    A break is retried after ``backoff``'s next delay (capped, jittered; it starts over once bytes
    flow again) until ``deadline`` on ``clock``; then UpdateError ``download_failed``.  Without a
    deadline it retries until ``stop`` is set.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    backoff = backoff or Backoff(*download_backoff())
    started, failures, streak = clock(), 0, 0
    while True:
        have = dest.stat().st_size if dest.exists() else 0
        if have > size:
            log.warning("partial download %s is larger than the payload; starting over", dest)
            dest.unlink()
            have = 0
        if have == size:
            return
        if have:
            log.info("resuming the download at byte %d of %d (Range)", have, size)
        left = None if deadline is None else deadline - clock()
        try:
            _fetch(url, dest, have, size, progress, stop, timeout if left is None else max(1.0, min(timeout, left)))
        except _Cut as exc:
            failures += 1
            got = dest.stat().st_size if dest.exists() else 0
            if got > have:
                backoff.reset()            # bytes flowed: a new break starts with a short delay again
                streak = 0
            streak += 1
            left = None if deadline is None else deadline - clock()
            if left is not None and left <= 0:
                raise UpdateError("download_failed", f"download of {url} broke off {failures} times in "
                                                     f"{clock() - started:.0f}s and the update's deadline has "
                                                     f"passed (last: {exc}); the server may offer it again") from None
            delay = backoff.next_delay() if left is None else min(backoff.next_delay(), left)
            log.warning("download interrupted at byte %d (%s); retrying in %.1fs%s", got, exc, delay,
                        "" if left is None else f" (giving up in {left:.0f}s)")
            if on_retry is not None:
                on_retry(Retry(streak=streak, error=str(exc), delay=delay, left=left))
            if (stop or threading.Event()).wait(delay):
                raise Cancelled() from None


def download_backoff() -> tuple[float, float]:
    """(first delay, cap) in seconds between download attempts: FLEET_AGENT_DOWNLOAD_BACKOFF="1,30"."""
    value = os.environ.get(DOWNLOAD_BACKOFF_ENV, "").strip()
    if not value:
        return DOWNLOAD_BACKOFF
    try:
        initial, cap = (float(v) for v in value.split(","))
        if 0 < initial <= cap:
            return initial, cap
    except ValueError:
        pass
    log.warning("%s must be 'first,cap' seconds (0 < first <= cap); using %s", DOWNLOAD_BACKOFF_ENV,
                DOWNLOAD_BACKOFF)
    return DOWNLOAD_BACKOFF


def _rate_limit() -> float:
    """Bytes per second an agent may download (FLEET_AGENT_DOWNLOAD_RATE; 0 or unset: no limit).
    A fleet-wide cap keeps a rollout from saturating a site's uplink."""
    try:
        return max(float(os.environ.get("FLEET_AGENT_DOWNLOAD_RATE", "0") or 0), 0.0)
    except ValueError:
        log.warning("FLEET_AGENT_DOWNLOAD_RATE must be a number of bytes per second; ignoring it")
        return 0.0


def _fetch(url, dest: Path, have: int, size: int, progress, stop, timeout) -> None:
    rate, started, start_have = _rate_limit(), time.monotonic(), have
    headers = {"User-Agent": f"fleet-agent/{AGENT_VERSION}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Cut(f"HTTP {exc.code}") from None
        raise UpdateError("download_failed", f"download of the payload failed with HTTP {exc.code} "
                                             f"({exc.reason}); the URL may have expired") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _Cut(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None
    with resp:
        mode = "ab"
        if have and resp.status == 200:
            log.info("server ignored the Range request; downloading from the start")
            mode, have = "wb", 0
        elif resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {have}-"):
                raise UpdateError("download_failed", f"server answered Range bytes={have}- with "
                                                     f"Content-Range {crange!r}")
        with open(dest, mode) as fh:
            try:
                while True:
                    if stop is not None and stop.is_set():
                        raise Cancelled()
                    chunk = resp.read(READ_CHUNK)
                    if not chunk:
                        break
                    if have + len(chunk) > size:
                        raise UpdateError("size_mismatch", f"the server sent more than the declared "
                                                           f"{size} bytes")
                    fh.write(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(have)
                    if rate:
                        ahead = (have - start_have) / rate - (time.monotonic() - started)
                        if ahead > 0:
                            fh.flush()
                            if stop is not None and stop.wait(ahead):
                                raise Cancelled()
                            elif stop is None:
                                time.sleep(ahead)
            except (http.client.IncompleteRead, OSError) as exc:
                fh.flush()
                os.fsync(fh.fileno())
                raise _Cut(f"{type(exc).__name__}: {exc}") from None
            fh.flush()
            os.fsync(fh.fileno())
    if have < size:
        raise _Cut(f"connection closed after {have} of {size} bytes")


def write_partition(disk_path: str | os.PathLike, number: int, src: str | os.PathLike, size: int, sha256: str,
                    *, after_chunk: Callable[[int], None] | None = None) -> None:
    """Write ``src`` into partition ``number`` (never beyond its end), zero the rest, fsync, read back.

    The partition table is not touched here.  ``after_chunk(bytes_written)`` lets tests die midway.
    """
    table = gptdisk.read_gpt(disk_path)
    part = table.get(number)
    start, length = part.offset(table.sector_size), part.size(table.sector_size)
    if size > length:
        raise UpdateError("too_large", f"payload of {size} bytes does not fit {part.label} ({length} bytes)")
    fd = os.open(disk_path, os.O_RDWR)
    try:
        with open(src, "rb") as fh:
            pos = 0
            while pos < size:
                chunk = fh.read(min(CHUNK, size - pos))
                if not chunk:
                    raise UpdateError("size_mismatch", f"{src} ended at byte {pos} of {size}")
                assert pos + len(chunk) <= length
                os.pwrite(fd, chunk, start + pos)
                pos += len(chunk)
                if after_chunk is not None:
                    after_chunk(pos)
        zero = bytes(CHUNK)
        while pos < length:                          # no stale bytes of the old /usr after the payload
            n = min(CHUNK, length - pos)
            os.pwrite(fd, zero[:n], start + pos)
            pos += n
        os.fsync(fd)
        try:
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)   # read back from the device
        except (AttributeError, OSError):
            pass
    finally:
        os.close(fd)
    got = file_sha256(disk_path, size, start)
    if got != sha256:
        raise UpdateError("readback_mismatch", f"{part.label} reads back as sha256 {got[:12]}…, "
                                               f"expected {sha256[:12]}…; the disk may be failing")


# -- the engine -------------------------------------------------------------------------------

ReportStatus = Callable[[dict], Awaitable[None]]
ReportEvent = Callable[[str, dict, str | None], Awaitable[None]]


class UpdateEngine:
    def __init__(self, host, state_dir: str | os.PathLike, report_status: ReportStatus, report_event: ReportEvent):
        self.host = host
        self.state_dir = Path(state_dir)
        self.report_status = report_status
        self.report_event = report_event
        self.status = IDLE
        self.progress: float | None = None
        self.offer: Offer | None = None
        self.task: asyncio.Task | None = None
        self.stop = threading.Event()
        self.installed: dict | None = None        # {version, partition, label, rollout} once installed
        self._queued: tuple | None = None

    # -- state ---------------------------------------------------------------------------------
    def fields(self) -> dict:
        """What a ``status`` frame carries about the update."""
        out: dict = {"update_status": self.status}
        if self.progress is not None:
            out["progress"] = round(self.progress, 4)
        if self.offer is not None:
            out["target_version"] = self.offer.version
            if self.offer.rollout is not None:
                out["rollout"] = self.offer.rollout
        return out

    async def transition(self, new: str, progress: float | None = None) -> None:
        if new not in TRANSITIONS[self.status]:
            raise RuntimeError(f"update engine: no transition {self.status} -> {new}")
        log.info("update %s -> %s%s", self.status, new,
                 f" ({self.offer.version})" if self.offer is not None else "")
        self.status, self.progress = new, progress
        await self.report_status(self.fields())

    def reset(self) -> None:
        """A (simulated) boot: the running system starts over in IDLE."""
        self.status, self.progress, self.offer, self.installed, self._queued = IDLE, None, None, None, None

    def restore_need_reboot(self, pending: dict) -> None:
        self.status = NEED_REBOOT
        self.offer = Offer(version=pending["version"], url="", size=0, sha256="", signature="",
                           rollout=pending.get("rollout"))
        self.installed = pending

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, msg: dict, on_installed: Callable[[], Awaitable[None]]) -> bool:
        """Handle an ``update`` frame in the background.

        While one runs, a frame for the same version is a duplicate (False); any other is queued
        (the latest wins) and handled when the current one finishes.
        """
        offer = Offer.from_frame(msg)
        if self.busy:
            if self.offer is not None and self.offer.version == offer.version and self.status not in (IDLE, ERROR):
                return False
            self._queued = (offer, on_installed)
            return True
        self.stop.clear()
        self._queued = (offer, on_installed)
        self.task = asyncio.ensure_future(self._drain())
        return True

    async def _drain(self) -> None:
        while self._queued is not None and not self.stop.is_set():
            offer, on_installed = self._queued
            self._queued = None
            await self._run(offer, on_installed)

    async def cancel(self) -> None:
        self.stop.set()
        self._queued = None
        if self.task is not None and not self.task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=30)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self.task.cancel()

    # -- the run -------------------------------------------------------------------------------
    async def _run(self, offer: Offer, on_installed) -> None:
        previous = self.offer
        self.offer = offer
        try:
            if self.status == NEED_REBOOT and self.installed and self.installed.get("version") == offer.version:
                log.info("update %s is already installed and waits for a reboot", offer.version)
                await self.report_event("update_installed", self._installed_data(), None)
                await self.report_status(self.fields())
                return
            await self.transition(CHECKING)
            active, target = await asyncio.to_thread(self._check, offer)
            await self.transition(AVAILABLE)
            await self.transition(DOWNLOADING, 0.0)
            path = await self._download(offer)
            await self.transition(VERIFYING)
            await asyncio.to_thread(self._verify, path, offer)
            await self.transition(FINALIZING)
            await asyncio.to_thread(self._install, path, offer, target)
            self.installed = {"version": offer.version, "partition": target.number, "label": target.label,
                              "rollout": offer.rollout, "previous_version": active["version"],
                              "previous_partition": active["number"]}
            await self.report_event("update_installed", self._installed_data(), None)
            await self.transition(NEED_REBOOT)
            await on_installed()
        except AlreadyCurrent:
            log.info("version %s is already active; nothing to install", offer.version)
            await self.report_event("already_current", {"version": offer.version, "rollout": offer.rollout}, None)
            self.offer = previous if self.installed else None
            await self.transition(NEED_REBOOT if self.installed else IDLE)
        except UpdateError as exc:
            log.error("update %s refused/failed (%s): %s", offer.version, exc.code, exc.message)
            await self.transition(ERROR)
            await self.report_event("update_error", {"code": exc.code, "message": exc.message,
                                                     "rollout": offer.rollout, "version": offer.version},
                                    exc.message)
            await self.transition(IDLE)
            self.offer, self.installed = None, None
        except Cancelled:
            log.info("update %s interrupted; the partial download is kept for a resume", offer.version)
            if self.status in TRANSITIONS and IDLE in TRANSITIONS[self.status]:
                self.status, self.progress = IDLE, None
        except Exception as exc:  # a bug or an unexpected OS error: report it, never leave a half state
            log.exception("update %s failed unexpectedly", offer.version)
            if self.status != ERROR and ERROR in TRANSITIONS.get(self.status, ()):
                await self.transition(ERROR)
            await self.report_event("update_error", {"code": "internal", "message": f"{type(exc).__name__}: {exc}",
                                                     "rollout": offer.rollout, "version": offer.version}, str(exc))
            self.status, self.progress, self.offer, self.installed = IDLE, None, None, None
            await self.report_status(self.fields())

    def _installed_data(self) -> dict:
        i = self.installed or {}
        return {"version": i.get("version"), "partition": i.get("label"), "rollout": i.get("rollout")}

    def _check(self, offer: Offer) -> tuple[dict, gptdisk.Partition]:
        """CHECKING_FOR_UPDATE: everything that can be refused before a byte is downloaded."""
        partitions = self.host.partitions()
        active = next((p for p in partitions if p["active"]), None)
        if active is None:
            raise UpdateError("no_active_partition", "cannot tell which USR partition is running; "
                                                     "nothing to install into")
        current = active["version"]
        if current is not None and offer.version == current:
            raise AlreadyCurrent()
        if current is not None and signing.version_key(offer.version) < signing.version_key(current) \
                and not offer.allow_downgrade:
            raise UpdateError("downgrade_refused", f"version {offer.version} is lower than the running {current}; "
                                                   f"refused without allow_downgrade (an explicit channel rollback)")
        pinned = keys.pinned_key(self.state_dir)
        if pinned is None:
            raise UpdateError("no_signing_key", "no signing key is pinned yet; the server's policy must carry "
                                                "signing_key before updates can be verified")
        try:
            signing.verify(pinned, offer.signature, offer.version, offer.size, offer.sha256)
        except signing.SignatureError as exc:
            raise UpdateError("bad_signature", f"release {offer.version}: {exc}; nothing was downloaded") from None
        table = gptdisk.read_gpt(self.host.disk)
        target = gptdisk.other_usr(table, active["number"])
        room = target.size(table.sector_size)
        if offer.size > room:
            raise UpdateError("too_large", f"payload of {offer.size} bytes is larger than the inactive partition "
                                           f"{target.label} ({room} bytes); build it with "
                                           f"'imagebuilder payload --size-mib {room // (1024 * 1024)}' or less")
        if offer.size <= 0:
            raise UpdateError("size_mismatch", "the update declares an empty payload")
        return active, target

    async def _download(self, offer: Offer) -> Path:
        path = self.state_dir / DOWNLOAD_DIR / f"{offer.sha256}.part"
        loop = asyncio.get_running_loop()
        last = {"progress": 0.0, "time": time.monotonic()}

        def progress(have: int) -> None:
            value = have / offer.size
            now = time.monotonic()
            if value >= 1.0 or value - last["progress"] >= PROGRESS_STEP or now - last["time"] >= PROGRESS_SECONDS:
                last.update(progress=value, time=now)
                asyncio.run_coroutine_threadsafe(self._report_progress(value), loop)

        for stale in path.parent.glob("*.part") if path.parent.exists() else ():
            if stale != path:                        # one update at a time: older partials are dead
                log.info("removing the stale partial download %s", stale.name)
                stale.unlink(missing_ok=True)
        if path.exists():
            log.info("resuming the download of %s at byte %d", offer.version, path.stat().st_size)

        def retrying(retry: Retry) -> None:
            asyncio.run_coroutine_threadsafe(self._report_retry(offer, retry), loop)

        await asyncio.to_thread(download, offer.url, path, offer.size, progress=progress, stop=self.stop,
                                deadline=offer.deadline, on_retry=retrying)
        return path

    async def _report_retry(self, offer: Offer, retry: Retry) -> None:
        """A break of the transfer: tell the operator once per break that it is being retried (not once
        per attempt), and when; the status keeps DOWNLOADING with the progress so far."""
        if self.status != DOWNLOADING or retry.streak != 1:
            return
        until = "" if retry.left is None else f" for up to {retry.left:.0f}s (the update's deadline)"
        message = f"download of {offer.version} broke off ({retry.error}); retrying with backoff{until}"
        await self.report_event("download_retrying", {"version": offer.version, "rollout": offer.rollout,
                                                      "reason": retry.error[:300], "retry_in": round(retry.delay, 1),
                                                      "gives_up_in": None if retry.left is None
                                                      else round(retry.left)}, message)
        await self.report_status(self.fields())

    async def _report_progress(self, value: float) -> None:
        if self.status == DOWNLOADING:
            self.progress = value
            await self.report_status(self.fields())

    def _verify(self, path: Path, offer: Offer) -> None:
        size = path.stat().st_size
        if size != offer.size:
            path.unlink(missing_ok=True)
            raise UpdateError("size_mismatch", f"downloaded {size} bytes, the release declares {offer.size}")
        digest = file_sha256(path)
        if digest != offer.sha256:
            path.unlink(missing_ok=True)
            raise UpdateError("hash_mismatch", f"payload sha256 is {digest[:16]}…, the release declares "
                                               f"{offer.sha256[:16]}…; the download was deleted")

    def _install(self, path: Path, offer: Offer, target: gptdisk.Partition) -> None:
        disk_path = self.host.disk
        gptdisk.modify(disk_path, gptdisk.mark_unbootable, target.number)
        write_partition(disk_path, target.number, path, offer.size, offer.sha256)
        gptdisk.modify(disk_path, gptdisk.install_prepare, target.number)
        path.unlink(missing_ok=True)
        log.info("installed %s into %s (tries=1, successful=0, prioritized)", offer.version, target.label)
