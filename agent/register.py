"""``agent register``: trade an enrollment token for a host credential (stdlib urllib only)."""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from agent import disk as gptdisk
from agent import keys, signing
from agent.config import (
    AGENT_VERSION,
    EXIT_DISK_MISSING,
    EXIT_HOST_EXISTS,
    EXIT_INSECURE_SERVER,
    EXIT_KEY_MISMATCH,
    EXIT_MACHINE_ID_MISSING,
    EXIT_REGISTER_REJECTED,
    EXIT_SERVER_ERROR,
    EXIT_SERVER_UNREACHABLE,
    EXIT_USAGE,
    TOKEN_ERROR_EXITS,
    AgentError,
    Config,
)
from agent.host import DiskMissing, Host

log = logging.getLogger("agent.register")
REGISTER_PATH = "/api/v1/agents/register"
TIMEOUT = 20


def _post_json(url: str, body: dict, credential: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": f"fleet-agent/{AGENT_VERSION}"}
    if credential:  # re-registering ourselves: our own credential proves the machine id is ours
        headers["Authorization"] = f"Bearer {credential}"
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise AgentError(f"cannot reach the server at {url}: {reason}; check --server and the network",
                         EXIT_SERVER_UNREACHABLE) from None
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        payload = {}
    return status, payload if isinstance(payload, dict) else {}


def _own_credential(state_dir: Path, server: str) -> str | None:
    """The credential of an earlier registration with the same server, if this host has one."""
    try:
        previous = Config.load(state_dir)
    except AgentError:
        return None
    return previous.credential if previous.server.rstrip("/") == server else None


def _ws_url(server: str, ws_url: str | None) -> str:
    if ws_url and urllib.parse.urlsplit(ws_url).scheme in ("ws", "wss"):
        return ws_url
    parts = urllib.parse.urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = ws_url or "/ws/agent/"
    return urllib.parse.urlunsplit((scheme, parts.netloc, urllib.parse.urljoin(parts.path or "/", path), "", ""))


def is_loopback(hostname: str | None) -> bool:
    if not hostname:
        return False
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def register(server: str, token: str, state_dir: str | os.PathLike, disk: str | None = None,
             root: str = "/", machine_id: str | None = None, hostname: str | None = None,
             health_cmd: str | None = None, key_hash: str | None = None, insecure_http: bool = False) -> Config:
    server = server.rstrip("/")
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https"):
        raise AgentError(f"--server {server!r} must be an http:// or https:// URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not insecure_http:
        raise AgentError(f"refusing plain http:// to {parts.hostname}: the token and the credential would cross the "
                         f"network in clear; use https:// (or --insecure-http on a trusted network)",
                         EXIT_INSECURE_SERVER)
    if key_hash:
        try:
            key_hash = signing.parse_fingerprint(key_hash)
        except ValueError as exc:
            raise AgentError(f"--key-hash: {exc}", EXIT_USAGE) from None
    state_dir = Path(state_dir)
    host = Host(root=root, disk=disk, state_dir=state_dir)

    try:
        host.check_disk()
        disk_path = os.path.abspath(host.disk)
        host = Host(root=root, disk=disk_path, state_dir=state_dir)
        partitions = host.partitions()
        boot_id = host.boot_id()
    except DiskMissing as exc:
        raise AgentError(str(exc), EXIT_DISK_MISSING) from None
    except gptdisk.GptError as exc:
        raise AgentError(f"disk {host.disk}: {exc}", EXIT_DISK_MISSING) from None

    # machine id: the file under the root wins; --machine-id fills it in when missing.
    existing = host.machine_id()
    if existing is None:
        if not machine_id:
            raise AgentError(f"no machine id: {host.machine_id_path} is missing; pass --machine-id ID "
                             f"(or run systemd-machine-id-setup)", EXIT_MACHINE_ID_MISSING)
        host.write_machine_id(machine_id)
        existing = machine_id.strip()
    elif machine_id and machine_id.strip() != existing:
        log.warning("--machine-id %s differs from %s (%s); using the file", machine_id, host.machine_id_path, existing)
    machine_id = existing

    conf = host.update_conf()
    hostname = hostname or host.hostname()
    body = {
        "token": token,
        "machine_id": machine_id,
        "hostname": hostname,
        "boot_id": boot_id,
        "agent_version": AGENT_VERSION,
        "version": Host.active_version(partitions),
        "partitions": partitions,
        "channel": conf.get("GROUP") or None,
        "reboot_strategy": conf.get("REBOOT_STRATEGY") or None,
    }
    url = server + REGISTER_PATH
    status, payload = _post_json(url, body, _own_credential(state_dir, server))
    detail = str(payload.get("detail") or "")
    if status in (200, 201):
        missing = [k for k in ("host_id", "credential") if not payload.get(k)]
        if missing:
            raise AgentError(f"the server's register answer lacks {', '.join(missing)}", EXIT_SERVER_ERROR)
        try:
            public_key = keys.pin_at_registration(state_dir, payload, key_hash)
        except keys.TrustError as exc:
            raise AgentError(str(exc), EXIT_KEY_MISMATCH) from None
        if not key_hash:
            log.warning("no --key-hash: trusting the signing key %s this server sent on first use; pass the "
                        "--key-hash shown with the enrollment command to pin it",
                        signing.fingerprint(public_key) if public_key else "(none yet)")
        config = Config(state_dir=state_dir, server=server, ws_url=_ws_url(server, payload.get("ws_url")),
                        host_id=str(payload["host_id"]), disk=disk_path, root=os.path.abspath(root),
                        machine_id=machine_id, hostname=hostname, group=payload.get("group"),
                        org=payload.get("org"), health_cmd=health_cmd or None,
                        credential=str(payload["credential"]))
        config.save()
        if public_key:
            keys.save_pin(state_dir, public_key)
        return config
    code = payload.get("code")
    if code == "host_exists":
        raise AgentError(f"this machine id ({machine_id}) is already enrolled: {detail or code}; "
                         "an operator can allow one re-enrollment on the host's page (or API "
                         "POST /api/v1/hosts/{id}/allow-reenrollment), then run this again", EXIT_HOST_EXISTS)
    if code in TOKEN_ERROR_EXITS:
        hint = {
            "token_invalid": "check --token (copy it again from the Tokens page)",
            "token_expired": "create a new enrollment token",
            "token_revoked": "the token was revoked; create a new one",
            "token_exhausted": "the token reached its max uses; create a new one or raise max_uses",
        }[code]
        raise AgentError(f"enrollment token rejected ({code}): {detail or code}; {hint}", TOKEN_ERROR_EXITS[code])
    if 400 <= status < 500:
        raise AgentError(f"the server rejected the registration (HTTP {status}): {detail or 'no detail'}",
                         EXIT_REGISTER_REJECTED)
    raise AgentError(f"the server failed to register this host (HTTP {status}): {detail or 'no detail'}; "
                     f"retry later", EXIT_SERVER_ERROR)
