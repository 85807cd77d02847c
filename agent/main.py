"""``agent`` CLI: a thin click layer → :class:`agent.config.Config` → :class:`agent.agent.Agent`."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from agent import disk as gptdisk
from agent.boot import load_pending
from agent.config import (
    AGENT_VERSION,
    DEFAULT_STATE_DIR,
    EXIT_ERROR,
    AgentError,
    Config,
    load_state,
)
from agent.host import HostError
from agent.keys import load_pin

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _fail(message: str, code: int) -> None:
    click.echo(f"agent: error: {message}", err=True)
    sys.exit(code)


def expected_errors(func):
    """Turn expected failures into one stderr line and a named exit code (no traceback)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AgentError as exc:
            _fail(exc.message, exc.exit_code)
        except (HostError, gptdisk.GptError) as exc:
            _fail(str(exc), EXIT_ERROR)
        except PermissionError as exc:
            _fail(f"permission denied: {exc.filename or exc}; run as root or choose other paths", EXIT_ERROR)
    return wrapper


state_dir_option = click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
                                type=click.Path(file_okay=False), help="where the credential and state live")


@click.group()
@click.option("--log-level", default=None, help="[default: info for run, warning otherwise]",
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.version_option(AGENT_VERSION, prog_name="agent")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Fleetweb host agent."""
    level = log_level or ("info" if ctx.invoked_subcommand == "run" else "warning")
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger("websockets").setLevel(logging.WARNING)


@cli.command()
@click.option("--server", required=True, help="Fleetweb base URL, e.g. https://fleet.example.com")
@click.option("--token", required=True, help="enrollment token")
@state_dir_option
@click.option("--disk", default=None, help="disk (block device or image) holding USR-A [default: found by label]")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="root of the host's files (/etc/machine-id, /etc/coreos/update.conf)")
@click.option("--machine-id", default=None, help="machine id to write when <root>/etc/machine-id is missing")
@click.option("--hostname", default=None, help="hostname to report [default: the host's]")
@click.option("--health-cmd", default=None,
              help="shell command run after booting a new version (non-zero exit = unhealthy: roll back)")
@click.option("--key-hash", default=None,
              help="sha256:<hex> fingerprint of the organization's signing key (shown with the enrollment command); "
                   "the server's key must match (exit 51) and is pinned")
@click.option("--insecure-http", is_flag=True,
              help="allow a plain http:// server that is not a loopback address (exit 50 without it)")
@expected_errors
def register(server, token, state_dir, disk, root, machine_id, hostname, health_cmd, key_hash, insecure_http) -> None:
    """Enroll this host with a token; stores the credential in the state dir."""
    from agent.register import register as do_register
    config = do_register(server, token, state_dir, disk=disk, root=root, machine_id=machine_id, hostname=hostname,
                         health_cmd=health_cmd, key_hash=key_hash, insecure_http=insecure_http)
    click.echo(f"registered host {config.host_id} with {config.server}"
               f"{f' (group {config.group})' if config.group else ''}; state in {config.state_dir}")


@cli.command()
@state_dir_option
@click.option("--once", is_flag=True, help="connect, apply the policy, send one status, exit")
@expected_errors
def run(state_dir, once) -> None:
    """Connect to the server and follow its policy (until SIGTERM/SIGINT)."""
    from agent.agent import Agent
    config = Config.load(state_dir)
    sys.exit(Agent(config, once=once).run())


def local_status(state_dir: str) -> dict:
    config = Config.load(state_dir)
    host = config.host()
    state = load_state(config.state_dir)
    out: dict = {
        "host_id": config.host_id, "server": config.server, "ws_url": config.ws_url,
        "machine_id": config.machine_id, "hostname": config.hostname, "group": config.group, "org": config.org,
        "disk": config.disk, "root": config.root, "agent_version": AGENT_VERSION,
        "update_conf": {k: host.update_conf().get(k) for k in ("GROUP", "SERVER", "REBOOT_STRATEGY")},
        "policy_revision": state.get("policy_revision"), "policy": state.get("policy"),
        "health_cmd": config.health_cmd, "signing_key_id": (load_pin(config.state_dir) or {}).get("key_id"),
        "pending_update": load_pending(config.state_dir),
    }
    try:
        host.check_disk()
        partitions = host.partitions()
        active = next((p for p in partitions if p["active"]), None)
        out.update(boot_id=host.boot_id(), simulated=host.simulated,
                   active_partition=active["label"] if active else None,
                   version=active["version"] if active else None, partitions=partitions, disk_error=None)
    except (HostError, gptdisk.GptError, OSError) as exc:
        out.update(boot_id=None, simulated=None, active_partition=None, version=None, partitions=[],
                   disk_error=str(exc))
    return out


@cli.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@expected_errors
def status(state_dir, as_json) -> None:
    """Show the local view (no server contact)."""
    info = local_status(state_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    rows = [("host id", info["host_id"]), ("server", info["server"]), ("machine id", info["machine_id"]),
            ("hostname", info["hostname"]), ("boot id", info["boot_id"]), ("disk", info["disk"]),
            ("active", f"{info['active_partition']} ({info['version']})" if info["active_partition"] else "unknown"),
            ("GROUP", info["update_conf"]["GROUP"]), ("SERVER", info["update_conf"]["SERVER"]),
            ("REBOOT_STRATEGY", info["update_conf"]["REBOOT_STRATEGY"]),
            ("policy revision", info["policy_revision"]), ("signing key", info["signing_key_id"]),
            ("pending update", (f"{info['pending_update'].get('kind')} {info['pending_update'].get('version')} on "
                                f"{info['pending_update'].get('label')}") if info["pending_update"] else None)]
    for key, value in rows:
        click.echo(f"{key + ':':<17}{'-' if value is None else value}")
    if info["disk_error"]:
        click.echo(f"{'disk error:':<17}{info['disk_error']}")
    for p in info["partitions"]:
        click.echo(f"  {'*' if p['active'] else ' '} {p['number']} {p['label']:<6} version={p['version'] or '-'} "
                   f"priority={p['priority']} tries={p['tries']} successful={int(p['successful'])}")


# -- agent lock …: what locksmithctl does, against the same etcd ---------------------------------

def _lock_target(state_dir, endpoints, group, prefix, user, password, ca, cert, key):
    """Settings from the options, defaulting to what the last policy stored in the state dir."""
    from agent.config import EtcdSettings, load_etcd_settings
    stored = load_etcd_settings(state_dir) or EtcdSettings(endpoints=[])
    settings = EtcdSettings(
        endpoints=[e.strip() for e in endpoints.split(",") if e.strip()] if endpoints else stored.endpoints,
        group=stored.group if group is None else (group or None),
        prefix=stored.prefix if prefix is None else prefix,
        max=stored.max,
        username=user if user is not None else stored.username,
        password=password if password is not None else stored.password,
        ca=ca or stored.ca, cert=cert or stored.cert, key=key or stored.key)
    if not settings.endpoints:
        raise AgentError(f"no etcd endpoints: pass --endpoints URLS (none in the policy stored in {state_dir})")
    return settings


def _machine_id(state_dir) -> str:
    from pathlib import Path
    try:
        data = json.loads((Path(state_dir) / "agent.json").read_text())
        if data.get("machine_id"):
            return data["machine_id"]
        root = data.get("root") or "/"
    except (OSError, ValueError):
        root = "/"
    try:
        return (Path(root) / "etc" / "machine-id").read_text().strip()
    except OSError:
        raise AgentError("no machine id: pass the holder ID explicitly") from None


def _locksmith_call(settings, action):
    from agent.config import EXIT_SERVER_UNREACHABLE
    from agent.locksmith import ETCD_UNAVAILABLE, LockError, Locksmith
    try:
        client = settings.client()
    except (ValueError, OSError) as exc:
        raise AgentError(f"etcd client: {exc}") from None
    try:
        return action(Locksmith(client, settings.group, settings.prefix, default_max=max(settings.max or 1, 0)))
    except LockError as exc:
        raise AgentError(f"{exc.code}: {exc}", EXIT_SERVER_UNREACHABLE if exc.code == ETCD_UNAVAILABLE
                         else EXIT_ERROR) from None
    finally:
        client.close()


def lock_options(func):
    for option in reversed([
        state_dir_option,
        click.option("--endpoints", default=None, help="etcd endpoints, comma separated [default: from the policy]"),
        click.option("--group", default=None, help="lock group [default: from the policy; '' = the global lock]"),
        click.option("--prefix", default=None, help="key prefix, e.g. fleet/acme/ [default: from the policy]"),
        click.option("--user", default=None, help="etcd user [default: from the policy]"),
        click.option("--password", default=None, help="etcd password [default: from the policy]"),
        click.option("--ca", default=None, help="CA file for etcd TLS"),
        click.option("--cert", default=None, help="client certificate file for etcd TLS"),
        click.option("--key", default=None, help="client key file for etcd TLS"),
    ]):
        func = option(func)
    return func


@cli.group()
def lock() -> None:
    """The reboot semaphore in etcd (like locksmithctl)."""


@lock.command("status")
@lock_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@expected_errors
def lock_status(state_dir, endpoints, group, prefix, user, password, ca, cert, key, as_json) -> None:
    """Show free slots, max and the holders."""
    settings = _lock_target(state_dir, endpoints, group, prefix, user, password, ca, cert, key)
    sem = _locksmith_call(settings, lambda ls: ls.get())
    if as_json:
        click.echo(json.dumps({"semaphore": sem.semaphore, "max": sem.max, "holders": sem.holders,
                               "group": settings.group, "key": _key(settings)}))
        return
    click.echo(f"Available: {sem.semaphore}")
    click.echo(f"Max: {sem.max}")
    if sem.holders:
        click.echo("")
        click.echo("MACHINE ID")
        for holder in sem.holders:
            click.echo(holder)


def _key(settings) -> str:
    from agent.locksmith import group_key
    return group_key(settings.group, settings.prefix)


@lock.command("lock")
@click.argument("holder", required=False)
@lock_options
@expected_errors
def lock_lock(holder, state_dir, endpoints, group, prefix, user, password, ca, cert, key) -> None:
    """Take a slot for ID (default: this machine)."""
    settings = _lock_target(state_dir, endpoints, group, prefix, user, password, ca, cert, key)
    holder = holder or _machine_id(state_dir)
    sem = _locksmith_call(settings, lambda ls: ls.lock(holder))
    click.echo(f"locked {holder} ({sem.semaphore} of {sem.max} free)")


@lock.command("unlock")
@click.argument("holder", required=False)
@lock_options
@expected_errors
def lock_unlock(holder, state_dir, endpoints, group, prefix, user, password, ca, cert, key) -> None:
    """Release ID's slot (default: this machine); a non-holder is not an error."""
    settings = _lock_target(state_dir, endpoints, group, prefix, user, password, ca, cert, key)
    holder = holder or _machine_id(state_dir)
    sem = _locksmith_call(settings, lambda ls: ls.unlock(holder))
    click.echo(f"unlocked {holder} ({sem.semaphore} of {sem.max} free)")


@lock.command("set-max")
@click.argument("n", type=click.IntRange(min=0))
@lock_options
@expected_errors
def lock_set_max(n, state_dir, endpoints, group, prefix, user, password, ca, cert, key) -> None:
    """Set the number of hosts that may reboot at once (free slots change by new - old)."""
    settings = _lock_target(state_dir, endpoints, group, prefix, user, password, ca, cert, key)
    before, after = _locksmith_call(settings, lambda ls: ls.set_max(n))
    click.echo(f"Old-Max: {before.max}")  # as locksmithctl set-max prints it
    click.echo(f"Max: {after.max}")


if __name__ == "__main__":  # pragma: no cover
    cli()
