"""Apply a cloud-config document to the host under its root (the agent's ``--root``).

What coreos-cloudinit does at boot, scoped to the keys of DESIGN §4: ``write_files``, ``users``,
``ssh_authorized_keys`` (for ``core``), ``hostname``, ``manage_etc_hosts``, ``coreos.units``,
``coreos.update`` (update.conf) and ``coreos.locksmith`` (the locksmithd drop-in).

Idempotent: a file is rewritten only when its bytes, mode or owner differ, a link only when its
target differs, and unit ``command``s run only for a new revision or a unit whose files changed.
Each item that fails is reported (``errors``) and the others still apply.  Nothing is removed
when a later revision drops an item (coreos-cloudinit does not either).
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import cloudconfig, updateconf

log = logging.getLogger("agent.apply")

STATE_FILE = "cloud-config.json"
UNIT_DIR = "/etc/systemd/system"
RUNTIME_UNIT_DIR = "/run/systemd/system"
VENDOR_UNIT_DIR = "/usr/lib/systemd/system"
WANTS = "multi-user.target.wants"
LOCKSMITH_DROPIN = "/etc/systemd/system/locksmithd.service.d/20-cloudinit.conf"
# (cloud-config key, environment variable), in coreos-cloudinit's config.Locksmith field order.
LOCKSMITH_ENV = (
    ("endpoint", "LOCKSMITHD_ENDPOINT"),
    ("etcd_cafile", "LOCKSMITHD_ETCD_CAFILE"),
    ("etcd_certfile", "LOCKSMITHD_ETCD_CERTFILE"),
    ("etcd_keyfile", "LOCKSMITHD_ETCD_KEYFILE"),
    ("group", "LOCKSMITHD_GROUP"),
    ("window_start", "LOCKSMITHD_REBOOT_WINDOW_START"),
    ("window_length", "LOCKSMITHD_REBOOT_WINDOW_LENGTH"),
)
UPDATE_KEYS = (("group", "GROUP"), ("server", "SERVER"), ("reboot_strategy", "REBOOT_STRATEGY"))
CORE_USER = {"name": "core", "uid": 500, "gid": 500, "home": "/home/core", "shell": "/bin/bash"}


@dataclass
class Result:
    revision: int | None = None
    changed: list[str] = field(default_factory=list)     # paths written under the root (host view)
    commands: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: bool = False                                 # the same revision was applied already

    def as_event(self) -> dict:
        return {"revision": self.revision, "errors": self.errors, "changed": len(self.changed),
                "commands": [" ".join(c) for c in self.commands]}


def update_settings(content: str) -> dict[str, str]:
    """update.conf keys the document sets (GROUP/SERVER/REBOOT_STRATEGY); {} when none."""
    try:
        data = cloudconfig.load(content)
    except Exception:
        return {}
    update = ((data.get("coreos") or {}).get("update") or {}) if isinstance(data.get("coreos"), dict) else {}
    if not isinstance(update, dict):
        return {}
    return {key: cloudconfig.as_str(update[name]) for name, key in UPDATE_KEYS
            if update.get(name) not in (None, "")}


def locksmith_settings(content: str) -> dict[str, str]:
    try:
        data = cloudconfig.load(content)
    except Exception:
        return {}
    coreos = data.get("coreos") if isinstance(data.get("coreos"), dict) else {}
    locksmith = coreos.get("locksmith") if isinstance(coreos.get("locksmith"), dict) else {}
    return {k: cloudconfig.as_str(v) for k, v in locksmith.items() if v not in (None, "")}


def locksmith_dropin(locksmith: dict) -> str:
    """The drop-in coreos-cloudinit writes for ``coreos.locksmith`` ("" when nothing is set)."""
    lines = [f'Environment="{env}={cloudconfig.as_str(locksmith[key])}"'
             for key, env in LOCKSMITH_ENV if locksmith.get(key) not in (None, "")]
    return "[Service]\n" + "".join(line + "\n" for line in lines) if lines else ""


def load_state(state_dir) -> dict:
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_state(state_dir, data: dict) -> None:
    updateconf.atomic_write(Path(state_dir) / STATE_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o644)


def apply(host, content: str, revision: int | None = None, state_dir=None) -> Result:
    """Apply ``content`` to ``host`` (agent/host.py).  With ``state_dir`` the applied revision is
    remembered, and applying it again is a no-op."""
    state = load_state(state_dir) if state_dir is not None else {}
    result = Result(revision=revision)
    if revision is not None and state.get("revision") == revision:
        result.skipped = True
        return result
    _Applier(host, result, new_revision=revision is None or state.get("revision") != revision).run(content)
    if state_dir is not None:
        save_state(state_dir, {"revision": revision, "errors": result.errors, "applied_at": time.time(),
                               "update": update_settings(content), "locksmith": locksmith_settings(content)})
    return result


class _Applier:
    def __init__(self, host, result: Result, new_revision: bool = True):
        self.host = host
        self.result = result
        self.new_revision = new_revision

    # -- helpers ------------------------------------------------------------------------------
    def path(self, host_path: str) -> Path:
        return self.host.path(posixpath.normpath("/" + host_path.lstrip("/")))

    def error(self, where: str, message: str) -> None:
        log.warning("cloud-config %s: %s", where, message)
        self.result.errors.append(f"{where}: {message}")

    def write(self, host_path: str, data: bytes | str, mode: int = 0o644, uid: int | None = None,
              gid: int | None = None) -> bool:
        """Write when bytes, mode or owner differ; True when something changed."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        target = self.path(host_path)
        changed = False
        try:
            same = target.is_file() and not target.is_symlink() and target.read_bytes() == raw
        except OSError:
            same = False
        if not same:
            if target.is_symlink():
                target.unlink()
            updateconf.atomic_write(target, raw, mode)
            changed = True
        st = target.stat()
        if st.st_mode & 0o7777 != mode:
            os.chmod(target, mode)
            changed = True
        if (uid is not None and st.st_uid != uid) or (gid is not None and st.st_gid != gid):
            os.chown(target, uid if uid is not None else -1, gid if gid is not None else -1)
            changed = True
        if changed:
            self.result.changed.append(host_path)
        return changed

    def mkdir(self, host_path: str, mode: int, uid: int | None = None, gid: int | None = None) -> None:
        target = self.path(host_path)
        if not target.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            self.result.changed.append(host_path)
        st = target.stat()
        if st.st_mode & 0o7777 != mode:
            os.chmod(target, mode)
        if (uid is not None and st.st_uid != uid) or (gid is not None and st.st_gid != gid):
            os.chown(target, uid if uid is not None else -1, gid if gid is not None else -1)

    def link(self, host_path: str, target: str) -> bool:
        p = self.path(host_path)
        if p.is_symlink() and os.readlink(p) == target:
            return False
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            p.unlink()
        os.symlink(target, p)
        self.result.changed.append(host_path)
        return True

    # -- the document -------------------------------------------------------------------------
    def run(self, content: str) -> None:
        if not content or not content.strip():
            return
        if cloudconfig.is_script(content):
            self.error("document", "scripts are not run by the agent; use a cloud-config document")
            return
        try:
            data = cloudconfig.load(content)
        except Exception as exc:
            self.error("document", f"cannot parse: {exc}")
            return
        steps = [
            ("users", self.users), ("ssh_authorized_keys", self.core_keys), ("hostname", self.hostname),
            ("manage_etc_hosts", self.etc_hosts), ("write_files", self.write_files),
        ]
        for key, step in steps:
            if data.get(key) not in (None, "", []):
                self._guard(key, step, data[key], data)
        coreos = data.get("coreos") if isinstance(data.get("coreos"), dict) else {}
        if coreos.get("update"):
            self._guard("coreos.update", self.update, coreos["update"], data)
        if coreos.get("locksmith"):
            self._guard("coreos.locksmith", self.locksmith, coreos["locksmith"], data)
        if coreos.get("units"):
            self._guard("coreos.units", self.units, coreos["units"], data)

    def _guard(self, where, step, value, data) -> None:
        try:
            step(value, data)
        except Exception as exc:  # one bad item must not stop the rest
            self.error(where, f"{type(exc).__name__}: {exc}")

    # -- write_files --------------------------------------------------------------------------
    def write_files(self, files, data) -> None:
        if not isinstance(files, list):
            raise ValueError("must be a list")
        for item in files:
            path = cloudconfig.as_str((item or {}).get("path")) if isinstance(item, dict) else ""
            where = f"write_files {path or '?'}"
            try:
                if not path:
                    raise ValueError("a file needs a path")
                # A relative path is under /, as coreos-cloudinit writes it (path.Join(root, path)):
                # "etc/motd" is /etc/motd and no ".." climbs above the root.
                path = posixpath.normpath("/" + path.lstrip("/"))
                if cloudconfig.under_usr(path):
                    raise ValueError("/usr is read-only")
                raw = cloudconfig.decode_content(item.get("content"), item.get("encoding"))
                mode = int(cloudconfig.as_str(item.get("permissions") or "0644"), 8)
                uid, gid = self.owner(cloudconfig.as_str(item.get("owner") or ""))
                self.write(path, raw, mode, uid, gid)
            except (ValueError, OSError, KeyError) as exc:
                self.error(where, str(exc))

    def owner(self, owner: str) -> tuple[int | None, int | None]:
        """``user``, ``user:group`` or numeric ids, resolved in the root's passwd/group."""
        if not owner:
            return 0, 0
        user, _, group = owner.partition(":")
        passwd = {e[0]: e for e in self.read_db("etc/passwd")}
        groups = {e[0]: e for e in self.read_db("etc/group")}
        if user.isdigit():
            uid = int(user)
            default_gid = uid
        elif user in passwd:
            uid, default_gid = int(passwd[user][2]), int(passwd[user][3])
        else:
            raise ValueError(f"unknown user {user!r} in the root's /etc/passwd")
        if not group:
            return uid, default_gid
        if group.isdigit():
            return uid, int(group)
        if group in groups:
            return uid, int(groups[group][2])
        raise ValueError(f"unknown group {group!r} in the root's /etc/group")

    # -- passwd, group, shadow ----------------------------------------------------------------
    def read_db(self, rel: str) -> list[list[str]]:
        try:
            text = self.path(rel).read_text()
        except FileNotFoundError:
            return []
        return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]

    def write_db(self, rel: str, rows: list[list[str]], mode: int) -> None:
        self.write("/" + rel, "".join(":".join(r) + "\n" for r in rows), mode)

    def users(self, users, data) -> None:
        if not isinstance(users, list):
            raise ValueError("must be a list")
        for user in users:
            name = cloudconfig.as_str(user.get("name")) if isinstance(user, dict) else ""
            try:
                if not name:
                    raise ValueError("a user needs a name")
                self.ensure_user(user)
            except (ValueError, OSError) as exc:
                self.error(f"users {name or '?'}", str(exc))

    def ensure_user(self, user: dict) -> tuple[int, int, str]:
        name = cloudconfig.as_str(user["name"])
        passwd, group, shadow = self.read_db("etc/passwd"), self.read_db("etc/group"), self.read_db("etc/shadow")
        by_name = {r[0]: r for r in passwd}
        if name in by_name:
            row = by_name[name]
            uid, gid, home = int(row[2]), int(row[3]), row[5]
        else:
            system = cloudconfig.as_bool(user.get("system"))
            used_uids = {int(r[2]) for r in passwd if len(r) > 2 and r[2].isdigit()}
            used_gids = {int(r[2]) for r in group if len(r) > 2 and r[2].isdigit()}
            uid = int(user["uid"]) if str(user.get("uid", "")).isdigit() else (
                CORE_USER["uid"] if name == "core" and CORE_USER["uid"] not in used_uids else
                _free(used_uids, 100 if system else 1000))
            primary = cloudconfig.as_str(user.get("primary_group") or "")
            groups_by_name = {r[0]: r for r in group}
            if primary:
                if primary not in groups_by_name:
                    raise ValueError(f"primary group {primary!r} does not exist")
                gid = int(groups_by_name[primary][2])
            elif cloudconfig.as_bool(user.get("no_user_group")):
                gid = 100
            else:
                gid = uid if uid not in used_gids else _free(used_gids, uid)
                if name not in groups_by_name:
                    group.append([name, "x", str(gid), ""])
                else:
                    gid = int(groups_by_name[name][2])
            home = cloudconfig.as_str(user.get("homedir") or f"/home/{name}")
            shell = cloudconfig.as_str(user.get("shell") or "/bin/bash")
            gecos = cloudconfig.as_str(user.get("gecos") or "")
            passwd.append([name, "x", str(uid), str(gid), gecos, home, shell])
        # supplementary groups
        for gname in user.get("groups") or []:
            gname = cloudconfig.as_str(gname)
            row = next((r for r in group if r[0] == gname), None)
            if row is None:
                self.error(f"users {name}", f"group {gname!r} does not exist in the root's /etc/group")
                continue
            while len(row) < 4:
                row.append("")
            members = [m for m in row[3].split(",") if m]
            if name not in members:
                row[3] = ",".join(members + [name])
        # shadow: the hash from ``passwd`` (or locked "*"); the change day is kept once set
        srow = next((r for r in shadow if r[0] == name), None)
        hashed = cloudconfig.as_str(user.get("passwd") or "") or None
        if srow is None:
            shadow.append([name, hashed or "*", str(int(time.time() // 86400)), "0", "99999", "7", "", "", ""])
        elif hashed and srow[1] != hashed:
            srow[1] = hashed
        self.write_db("etc/passwd", passwd, 0o644)
        self.write_db("etc/group", group, 0o644)
        self.write_db("etc/shadow", shadow, 0o640)
        if not cloudconfig.as_bool(user.get("no_create_home")):
            self.mkdir(home, 0o755, uid, gid)
        keys = [cloudconfig.as_str(k) for k in user.get("ssh_authorized_keys") or []]
        if keys:
            self.authorized_keys(home, keys, uid, gid)
        return uid, gid, home

    def authorized_keys(self, home: str, keys: list[str], uid: int, gid: int) -> None:
        if not self.path(home).is_dir():
            self.mkdir(home, 0o755, uid, gid)
        self.mkdir(posixpath.join(home, ".ssh"), 0o700, uid, gid)
        self.write(posixpath.join(home, ".ssh/authorized_keys"), "".join(k.strip() + "\n" for k in keys),
                   0o600, uid, gid)

    def core_keys(self, keys, data) -> None:
        if not isinstance(keys, list):
            raise ValueError("must be a list")
        # Keys listed for core under ``users`` too are merged into one file.
        extra = []
        for user in data.get("users") or []:
            if isinstance(user, dict) and user.get("name") == "core":
                extra = [cloudconfig.as_str(k) for k in user.get("ssh_authorized_keys") or []]
        uid, gid, home = self.ensure_user({"name": "core", "homedir": CORE_USER["home"]})
        all_keys = list(dict.fromkeys(extra + [cloudconfig.as_str(k) for k in keys]))
        self.authorized_keys(home, all_keys, uid, gid)

    # -- hostname, /etc/hosts -----------------------------------------------------------------
    def hostname(self, name, data) -> None:
        self.write("/etc/hostname", cloudconfig.as_str(name).strip() + "\n", 0o644)

    def etc_hosts(self, value, data) -> None:
        if cloudconfig.as_str(value) != "localhost":
            raise ValueError(f"invalid value {value}")
        name = cloudconfig.as_str(data.get("hostname") or "") or self.host.hostname()
        self.write("/etc/hosts", f"127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {name}\n", 0o644)

    # -- coreos.update, coreos.locksmith ------------------------------------------------------
    def update(self, update, data) -> None:
        if not isinstance(update, dict):
            raise ValueError("must be a map")
        values = {key: cloudconfig.as_str(update[name]) for name, key in UPDATE_KEYS
                  if update.get(name) not in (None, "")}
        if values and self.host.rewrite_update_conf(values):
            self.result.changed.append("/etc/coreos/update.conf")

    def locksmith(self, locksmith, data) -> None:
        if not isinstance(locksmith, dict):
            raise ValueError("must be a map")
        text = locksmith_dropin(locksmith)
        if text:
            self.write(LOCKSMITH_DROPIN, text, 0o644)

    # -- coreos.units -------------------------------------------------------------------------
    def units(self, units, data) -> None:
        if not isinstance(units, list):
            raise ValueError("must be a list")
        touched: list[tuple[dict, bool]] = []
        for unit in units:
            name = cloudconfig.as_str(unit.get("name")) if isinstance(unit, dict) else ""
            try:
                if not name or "/" in name:
                    raise ValueError("a unit needs a file name")
                touched.append((unit, self.unit_files(unit, name)))
            except (ValueError, OSError) as exc:
                self.error(f"units {name or '?'}", str(exc))
        if any(changed for _, changed in touched):
            self.systemctl(["daemon-reload"], "units")
        for unit, changed in touched:
            command = cloudconfig.as_str(unit.get("command") or "")
            if command and (changed or self.new_revision):
                self.systemctl([command, cloudconfig.as_str(unit["name"])], f"units {unit['name']}")

    def unit_files(self, unit: dict, name: str) -> bool:
        before = len(self.result.changed)
        base = RUNTIME_UNIT_DIR if cloudconfig.as_bool(unit.get("runtime")) else UNIT_DIR
        unit_path = posixpath.join(base, name)
        if cloudconfig.as_bool(unit.get("mask")):
            self.link(unit_path, "/dev/null")
        elif unit.get("content") not in (None, ""):
            self.write(unit_path, cloudconfig.as_str(unit["content"]), 0o644)
        for drop in unit.get("drop_ins") or []:
            dname = cloudconfig.as_str(drop.get("name")) if isinstance(drop, dict) else ""
            if not dname or "/" in dname:
                self.error(f"units {name}", "a drop-in needs a file name")
                continue
            self.write(posixpath.join(base, f"{name}.d", dname), cloudconfig.as_str(drop.get("content")), 0o644)
        if cloudconfig.as_bool(unit.get("enable")) and not cloudconfig.as_bool(unit.get("mask")):
            target = unit_path if unit.get("content") not in (None, "") else posixpath.join(VENDOR_UNIT_DIR, name)
            self.link(posixpath.join(base, WANTS, name), target)
        return len(self.result.changed) > before

    def systemctl(self, args: list[str], where: str) -> None:
        self.result.commands.append(args)
        try:
            code = self.host.systemctl(args)
        except OSError as exc:
            self.error(where, f"systemctl {' '.join(args)}: {exc}")
            return
        if code:
            self.error(where, f"systemctl {' '.join(args)} exited with {code}")


def _free(used: set[int], start: int) -> int:
    n = start
    while n in used:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The agent's side of serving: fetch the effective document the policy points at, apply it
# ---------------------------------------------------------------------------------------------

def update_overrides(state_dir) -> dict[str, str]:
    """update.conf keys the last applied document sets (they win over the policy's GROUP and
    REBOOT_STRATEGY, as on a host configured by coreos-cloudinit)."""
    value = load_state(state_dir).get("update") or {}
    return {k: str(v) for k, v in value.items() if k in dict(UPDATE_KEYS).values()} if isinstance(value, dict) else {}


def locksmith_overrides(state_dir) -> dict[str, str]:
    """``coreos.locksmith`` of the last applied document (window_start, window_length, group, ...)."""
    value = load_state(state_dir).get("locksmith") or {}
    return {k: str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def local_addresses(server: str) -> dict[str, str]:
    """The address this host reaches the server from (private_* or public_* by its range)."""
    import ipaddress
    import socket
    from urllib.parse import urlparse

    u = urlparse(server)
    try:
        infos = socket.getaddrinfo(u.hostname, u.port or (443 if u.scheme == "https" else 80), 0, socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr)
            ip = ipaddress.ip_address(s.getsockname()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {("private_" if ip.is_private else "public_") + ("ipv4" if ip.version == 4 else "ipv6"): str(ip)}


def fetch(server: str, credential: str, url: str, timeout: float = 30.0) -> dict:
    """POST the host's addresses to the policy's ``cloud_config_url`` and return
    ``{"content", "revision"}``.  The credential only ever goes to the server we registered with:
    the URL's path is resolved against ``server``."""
    import urllib.request
    from urllib.parse import urljoin, urlparse

    from agent.config import AGENT_VERSION

    target = urljoin(server.rstrip("/") + "/", urlparse(url).path.lstrip("/"))
    body = json.dumps({"addresses": local_addresses(server)}).encode()
    req = urllib.request.Request(target, data=body, method="POST", headers={
        "Authorization": f"Bearer {credential}", "Content-Type": "application/json",
        "User-Agent": f"fleet-agent/{AGENT_VERSION}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = json.loads(resp.read().decode("utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("revision"), int) \
            or not isinstance(data.get("content"), str):
        raise ValueError("the server's cloud-config answer is malformed")
    return data


def sync(host, state_dir, server: str, credential: str, policy: dict) -> Result | None:
    """Called for each ``policy`` frame: fetch and apply when the group's ``cloud_config_revision``
    moved; returns the Result to report, or None when there was nothing new to apply."""
    seen = policy.get("cloud_config_revision")
    url = policy.get("cloud_config_url")
    if not isinstance(seen, int) or not url:
        return None
    state = load_state(state_dir)
    if state.get("seen") == seen and "revision" in state:
        return None
    doc = fetch(server, credential, url)
    if doc["revision"] == 0 and state.get("revision") in (None, 0):
        save_state(state_dir, {**state, "seen": seen, "revision": 0})
        return None
    result = apply(host, doc["content"], doc["revision"], state_dir)
    new_state = load_state(state_dir)
    new_state.update(seen=seen, update={k: v for k, v in update_settings(doc["content"]).items()})
    save_state(state_dir, new_state)
    return None if result.skipped else result
