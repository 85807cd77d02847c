"""The one small interface to everything on the host: files under the root, the disk, boot id, reboot, clock.

A real host uses ``root=/`` and the disk holding USR-A.  Tests and demos hand it a scratch root and
a disk image file; then boots are simulated: the simulated boot id and the partition the last
simulated boot chose live in the state dir, and a "reboot" runs the gptprio choice on the image.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

from agent import disk as gptdisk
from agent import updateconf

log = logging.getLogger("agent.host")

BY_PARTLABEL = Path("/dev/disk/by-partlabel")
SIM_BOOT_FILE = "simulated-boot.json"
SYSTEMCTL_LOG = "systemctl.log"       # systemctl calls recorded on a disk-image / scratch-root host


class HostError(Exception):
    """Something about the host is missing or wrong; the message says what to fix."""


class DiskMissing(HostError):
    pass


def find_usr_disk() -> str | None:
    """The whole-disk device that holds the USR-A partition (real hosts), or None."""
    link = BY_PARTLABEL / "USR-A"
    if link.exists():
        part = os.path.basename(os.path.realpath(link))
        sys_link = Path("/sys/class/block") / part
        if sys_link.exists():
            parent = Path(os.path.realpath(sys_link)).parent.name
            if (Path("/dev") / parent).exists():
                return f"/dev/{parent}"
    try:
        out = subprocess.run(["lsblk", "-J", "-o", "NAME,PKNAME,PARTLABEL,TYPE"], capture_output=True,
                             timeout=10, check=False).stdout
        data = json.loads(out or b"{}")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None

    def walk(devs, parent=None):
        for d in devs or []:
            if d.get("partlabel") == "USR-A":
                return f"/dev/{d.get('pkname') or parent}"
            found = walk(d.get("children"), d.get("name"))
            if found:
                return found
        return None

    return walk(data.get("blockdevices"))


class Host:
    def __init__(self, root: str | os.PathLike = "/", disk: str | os.PathLike | None = None,
                 state_dir: str | os.PathLike = "/var/lib/fleet-agent"):
        self.root = Path(root)
        self.state_dir = Path(state_dir)
        self._disk = os.fspath(disk) if disk else None

    # -- files under the root -------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    @property
    def machine_id_path(self) -> Path:
        return self.path("etc/machine-id")

    @property
    def update_conf_path(self) -> Path:
        return self.path("etc/coreos/update.conf")

    def machine_id(self) -> str | None:
        try:
            value = self.machine_id_path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return value or None

    def write_machine_id(self, value: str) -> None:
        updateconf.atomic_write(self.machine_id_path, value.strip() + "\n", 0o444)

    def hostname(self) -> str:
        if os.path.realpath(self.root) != "/":
            try:
                name = self.path("etc/hostname").read_text().strip()
                if name:
                    return name
            except OSError:
                pass
        return socket.gethostname()

    def update_conf(self) -> dict[str, str]:
        return updateconf.read(self.update_conf_path)

    def rewrite_update_conf(self, updates: dict[str, str | None]) -> bool:
        return updateconf.rewrite(self.update_conf_path, updates)

    def now(self) -> datetime:
        """Host local wall clock (reboot windows use it)."""
        return datetime.now()

    # -- disk -----------------------------------------------------------------------------
    @property
    def disk(self) -> str:
        if self._disk is None:
            self._disk = find_usr_disk()
            if self._disk is None:
                raise DiskMissing("no disk holds a USR-A partition; pass --disk PATH (a block device or disk image)")
        return self._disk

    def check_disk(self) -> gptdisk.Gpt:
        path = self.disk
        if not os.path.exists(path):
            raise DiskMissing(f"disk {path} does not exist; pass --disk with an existing device or image")
        try:
            return gptdisk.read_gpt(path)
        except gptdisk.GptError as exc:
            raise DiskMissing(f"disk {path} has no valid GPT ({exc}); build one with 'imagebuilder disk'") from None
        except PermissionError:
            raise DiskMissing(f"disk {path} is not readable; run as root or pass --disk") from None

    @property
    def simulated(self) -> bool:
        """True when the disk is an image file: boots and reboots are simulated."""
        try:
            return stat.S_ISREG(os.stat(self.disk).st_mode)
        except OSError:
            return False

    def _sim_file(self) -> Path:
        return self.state_dir / SIM_BOOT_FILE

    def _sim_state(self) -> dict:
        try:
            data = json.loads(self._sim_file().read_text())
            if isinstance(data, dict) and data.get("boot_id"):
                return data
        except (OSError, ValueError):
            pass
        return self._simulate_boot()

    def _simulate_boot(self) -> dict:
        chosen = gptdisk.boot_choice(self.disk)
        data = {"boot_id": str(uuid.uuid4()), "active": chosen.number if chosen else None,
                "label": chosen.label if chosen else None}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        updateconf.atomic_write(self._sim_file(), json.dumps(data) + "\n", 0o644)
        log.info("simulated boot of %s: chose %s, boot id %s", self.disk, data["label"] or "nothing", data["boot_id"])
        return data

    def boot_id(self) -> str:
        if self.simulated:
            return self._sim_state()["boot_id"]
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    def active_partition(self) -> int | None:
        """Number of the USR partition the running system booted from."""
        if self.simulated:
            return self._sim_state()["active"]
        return self._active_from_cmdline()

    def _active_from_cmdline(self) -> int | None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            return None
        m = re.search(r"(?:^|\s)(?:mount\.usr|usr)=(\S+)", cmdline)
        if not m:
            return None
        spec = m.group(1)
        gpt = gptdisk.read_gpt(self.disk)
        key, _, value = spec.partition("=")
        for p in gpt.usr_partitions():
            if key == "PARTUUID" and p.unique_guid.lower() == value.lower():
                return p.number
            if key == "PARTLABEL" and p.label == value:
                return p.number
            if spec.startswith("/dev/disk/by-partuuid/") and spec.rsplit("/", 1)[1].lower() == p.unique_guid:
                return p.number
            if spec.startswith("/dev/disk/by-partlabel/") and spec.rsplit("/", 1)[1] == p.label:
                return p.number
        if spec.startswith("/dev/"):
            m2 = re.search(r"(\d+)$", os.path.realpath(spec))
            if m2:
                return int(m2.group(1))
        return None

    def partitions(self) -> list[dict]:
        return gptdisk.partition_report(self.disk, self.active_partition())

    @staticmethod
    def active_version(partitions: list[dict]) -> str | None:
        return next((p["version"] for p in partitions if p["active"]), None)

    @property
    def scratch(self) -> bool:
        """A disk image or a scratch root: nothing may touch the machine's own systemd."""
        if os.path.realpath(self.root) != "/":
            return True
        try:
            return self.simulated
        except HostError:
            return False

    def systemctl(self, args: list[str]) -> int:
        """Run ``systemctl ARGS`` (cloud-config unit commands); recorded, one JSON line per call,
        in the state dir's systemctl.log on a scratch host.  Returns the exit code."""
        if self.scratch:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.state_dir / SYSTEMCTL_LOG, "a") as fh:
                fh.write(json.dumps({"args": list(args), "root": os.fspath(self.root)}) + "\n")
            return 0
        log.info("systemctl %s", " ".join(args))
        try:
            return subprocess.run(["systemctl", *args], check=False, timeout=120).returncode
        except subprocess.TimeoutExpired:
            return 124

    def systemctl_calls(self) -> list[list[str]]:
        try:
            lines = (self.state_dir / SYSTEMCTL_LOG).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line)["args"] for line in lines if line.strip()]

    def reboot(self) -> str | None:
        """Reboot. Simulated on a disk image: gptprio choice, new boot id (returned)."""
        if self.simulated:
            return self._simulate_boot()["boot_id"]
        log.warning("rebooting the host (systemctl reboot)")
        subprocess.run(["systemctl", "reboot"], check=False)
        return None
