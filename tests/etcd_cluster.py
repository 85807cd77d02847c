"""A throw-away 3-member etcd cluster on loopback free ports (data dirs under a temp dir), stopped by PID.

    with EtcdCluster(3) as cluster:
        cluster.endpoints            # ["http://127.0.0.1:P1", ...]
        cluster.leader()             # the member that leads now
        cluster.kill(member)         # SIGKILL, like a crash
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scripts.services import ETCD_BIN, HOST, LOG_DIR, _spawn, etcd_healthy, free_port, pid_alive, stop_pid


@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: str
    log: Path
    pid: int | None = None

    def status(self, timeout: float = 1.0) -> dict | None:
        """The v3 gateway's maintenance status ({"header": {"member_id"}, "leader"}), or None."""
        req = urllib.request.Request(self.client_url + "/v3/maintenance/status", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid, ETCD_BIN)


class EtcdCluster:
    def __init__(self, size: int = 3):
        self.tmp = tempfile.mkdtemp(prefix="etcd-cluster-")
        self.members: list[Member] = []
        ports = set()
        while len(ports) < 2 * size:
            ports.add(free_port())
        ports = sorted(ports)
        for i in range(size):
            name = f"m{i}"
            self.members.append(Member(name, f"http://{HOST}:{ports[2 * i]}", f"http://{HOST}:{ports[2 * i + 1]}",
                                       os.path.join(self.tmp, name), LOG_DIR / f"etcd-cluster-{ports[2 * i]}.log"))
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for m in self.members:
                cmd = [ETCD_BIN, "--name", m.name, "--data-dir", m.data_dir,
                       "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                       "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                       "--initial-cluster", initial, "--initial-cluster-state", "new",
                       "--initial-cluster-token", os.path.basename(self.tmp),
                       "--heartbeat-interval", "50", "--election-timeout", "500",
                       "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
                m.pid = _spawn(cmd, m.log)
            deadline = time.monotonic() + 120
            while not all(etcd_healthy(m.client_url) for m in self.members):
                if time.monotonic() > deadline:
                    raise RuntimeError("the etcd cluster did not become healthy within 120s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def leader(self, timeout: float = 60.0) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.alive():
                    continue
                st = m.status()
                if st and str(st.get("leader")) == str(st.get("header", {}).get("member_id")) \
                        and st.get("leader") not in (None, "0"):
                    return m
            time.sleep(0.05)
        raise RuntimeError("no etcd leader")

    def kill(self, member: Member) -> None:
        if member.alive():
            os.kill(member.pid, signal.SIGKILL)
        stop_pid(member.pid, timeout=5, expect=ETCD_BIN)
        member.pid = None

    def stop(self) -> None:
        for m in self.members:
            if m.pid is not None:
                stop_pid(m.pid, timeout=5, expect=ETCD_BIN)
                m.pid = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
