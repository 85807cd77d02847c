"""The one check of what a rollout left on record, shared by every fault scenario.

A fault test drives a rollout to real agents through an outage, then calls :func:`check` with the
rollout and the agents.  Everything is read back from what the system recorded, not from what the
test saw happen:

* the RolloutHost rows: every host granted exactly once (``attempts``), ``granted_at`` and
  ``finished_at`` set, ``succeeded``; the most hosts in flight at once, computed from the
  ``[granted_at, finished_at]`` intervals, never above the group's ``max_in_flight``;
* the Event rows: one ``booted_new_version`` per host for this rollout, no failure of it
  (``update_error``, ``rollback``, ``health_check_failed``), no halt, one ``rollout_completed``;
* the agents' own disks: the partition a boot picks and the one the agent runs hold the new
  version and are marked successful; the server's host rows agree;
* optionally the reboot semaphore's history in etcd: at no revision more holders than its max.

Every problem found is listed together, followed by the recorded timeline, so a failure says what
happened rather than only what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from agent import disk, locksmith
from agent.host import Host as AgentHost
from fleetweb.fleet.models import Event, Host
from fleetweb.updates.choices import HostUpdateState, RolloutStatus
from fleetweb.updates.models import Rollout
from tests.e2e.conftest import AgentProc, wait_for

FAILURE_KINDS = ("update_error", "rollback", "health_check_failed")
# The events shown with a timeline (the rest of the activity log is noise for a rollout).
TIMELINE_KINDS = ("rollout_started", "rollout_halted", "rollout_completed", "update_installed", "rebooting",
                  "booted_new_version", "lock_acquired", "lock_waiting", "lock_released", "lock_taken",
                  "lock_unlocked", "channel_changed", "connected", "disconnected", "went_offline",
                  *FAILURE_KINDS)


def rollout_for(version: str):
    """The rollout of release VERSION (the scenarios run one group, so one rollout per release)."""
    return Rollout.objects.select_related("group", "release").get(release__version=version)


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant.  An interval that ends when another starts does not
    overlap it: a grant is stamped after the finish that freed its slot (see Rollout.advance)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    cur = best = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def describe(rollout_id: int) -> str:
    """The rollout's recorded timeline: its status, each host's entry and the events in order."""
    rollout = Rollout.objects.select_related("group", "release").get(pk=rollout_id)
    lines = [f"rollout {rollout.pk} of {rollout.release.version}: {rollout.status}"
             + (f" ({rollout.halted_reason})" if rollout.halted_reason else "")
             + f", max_in_flight={rollout.group.max_in_flight}, update_timeout={rollout.group.update_timeout}s"]
    for rh in rollout.hosts.select_related("host").order_by("granted_at", "host__hostname"):
        lines.append(f"  {rh.host.hostname:<10} {rh.state:<12} attempts={rh.attempts} "
                     f"granted={_t(rh.granted_at)} finished={_t(rh.finished_at)} progress={rh.progress:.2f}"
                     + (f" error={rh.error!r}" if rh.error else ""))
    events = (Event.objects.filter(organization_id=rollout.organization_id, kind__in=TIMELINE_KINDS,
                                   created__gte=rollout.created)
              .select_related("host").order_by("created", "id"))
    lines.append("  events:")
    for e in events:
        lines.append(f"    {_t(e.created)} {e.kind:<20} {e.host.hostname if e.host else '-':<10} {e.message[:160]}")
    return "\n".join(lines)


def _t(value: datetime | None) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3] if value else "-"


def wait(predicate, what: str, version: str, timeout: float = 60.0, interval: float = 0.2):
    """``wait_for`` whose timeout shows the rollout's timeline so far (once the rollout exists)."""
    try:
        return wait_for(predicate, timeout=timeout, interval=interval, what=what)
    except AssertionError as exc:
        rollout = Rollout.objects.filter(release__version=version).first()
        raise AssertionError(f"{exc}\n{describe(rollout.pk) if rollout else 'no rollout yet'}") from None


def wait_finished(version: str, timeout: float = 120.0):
    """Wait for the rollout of VERSION to leave running (completed, halted, aborted); a rollout
    still running after TIMEOUT is stuck, and the failure shows its timeline."""
    rollout = wait_for(lambda: rollout_for(version), timeout=30, what=f"the rollout of {version}")
    try:
        wait_for(lambda: rollout_for(version).status not in RolloutStatus.active(), timeout=timeout,
                 interval=0.5, what=f"the rollout of {version} to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: it is stuck\n{describe(rollout.pk)}") from None
    return rollout_for(version)


@dataclass(frozen=True)
class Semaphore:
    """Where the reboot semaphore of the scenario lives and what its max is."""
    client: object        # an etcd client (agent.etcd / pyetcd API)
    key: str
    max: int


def semaphore_history(client, key: str) -> list[tuple[int, locksmith.Semaphore]]:
    """Every value KEY has had since it was (last) created, oldest first: ``(mod revision, value)``,
    walking back one revision at a time (etcd keeps them until a compaction)."""
    value, meta = client.get(key)
    history = []
    while value is not None:
        history.append((meta.mod_revision, locksmith.Semaphore.from_json(value)))
        if meta.mod_revision <= meta.create_revision:
            break
        value, meta = client.get(key, revision=meta.mod_revision - 1)
    return history[::-1]


def check(version: str, agents: list[AgentProc], *, semaphore: Semaphore | None = None) -> None:
    """Assert the rollout of VERSION to AGENTS is sound (see the module docstring)."""
    rollout = rollout_for(version)
    group = rollout.group
    problems = []
    if rollout.status != RolloutStatus.COMPLETED:
        problems.append(f"the rollout is {rollout.status}, not completed"
                        + (f": {rollout.halted_reason}" if rollout.halted_reason else ""))

    entries = list(rollout.hosts.select_related("host"))
    by_host = {str(rh.host_id): rh for rh in entries}
    expected = {a.host_id: a.name for a in agents}
    if set(by_host) != set(expected):
        problems.append(f"the rollout covers {sorted(rh.host.hostname for rh in entries)}, "
                        f"not the agents {sorted(expected.values())}")
    for rh in entries:
        name = rh.host.hostname
        if rh.attempts != 1:
            problems.append(f"{name} was granted {rh.attempts} times")
        if rh.granted_at is None or rh.finished_at is None:
            problems.append(f"{name} has granted_at={rh.granted_at} finished_at={rh.finished_at}")
        elif rh.finished_at < rh.granted_at:
            problems.append(f"{name} finished before it was granted")
        if rh.state != HostUpdateState.SUCCEEDED:
            problems.append(f"{name} ended {rh.state}" + (f": {rh.error}" if rh.error else ""))

    now = timezone.now()  # an entry still in flight is counted as in flight until now
    intervals = [(rh.granted_at, rh.finished_at or now) for rh in entries if rh.granted_at]
    most = max_overlap(intervals)
    if most > group.max_in_flight:
        problems.append(f"{most} hosts were in flight at once (max_in_flight {group.max_in_flight})")

    events = list(Event.objects.filter(organization_id=rollout.organization_id, created__gte=rollout.created)
                  .select_related("host"))
    mine = [e for e in events if e.data.get("rollout") == rollout.pk]
    for host_id, name in expected.items():
        booted = [e for e in mine if e.kind == "booted_new_version" and str(e.host_id) == host_id]
        if len(booted) != 1:
            problems.append(f"{name} recorded {len(booted)} booted_new_version events for the rollout")
    for e in mine:
        if e.kind in FAILURE_KINDS or e.kind == "rollout_halted":
            problems.append(f"{e.kind} recorded: {e.message}")
    completed = [e for e in mine if e.kind == "rollout_completed"]
    if len(completed) != 1:
        problems.append(f"{len(completed)} rollout_completed events")

    hosts = {str(h.pk): h for h in Host.objects.filter(pk__in=list(expected))}
    for agent in agents:
        problems += disk_problems(agent, version)
        host = hosts.get(agent.host_id)
        if host is None or host.version != version:
            problems.append(f"{agent.name}: the server has it on {host.version if host else None}, not {version}")

    if semaphore is not None:
        history = semaphore_history(semaphore.client, semaphore.key)
        if not history:
            problems.append(f"no history of {semaphore.key} in etcd")
        for revision, sem in history:
            if len(sem.holders) > semaphore.max or len(set(sem.holders)) != len(sem.holders):
                problems.append(f"{semaphore.key} at revision {revision} had holders {sem.holders} "
                                f"(max {semaphore.max})")

    if problems:
        raise AssertionError("\n".join(problems) + "\n" + describe(rollout.pk))


def disk_problems(agent: AgentProc, version: str) -> list[str]:
    """What is wrong with AGENT's disk for VERSION: the partition it runs, and the one its next boot
    picks, must hold VERSION and be marked successful."""
    problems = []
    running = AgentHost(root=agent.root, disk=agent.disk, state_dir=agent.state_dir).partitions()
    active = next((p for p in running if p["active"]), None)
    if active is None or active["version"] != version:
        problems.append(f"{agent.name} runs {active}, not {version}")
    chosen = disk.choose_boot(disk.read_gpt(agent.disk))
    release = disk.read_release(agent.disk, chosen.number) if chosen else None
    if chosen is None or not chosen.successful or (release or {}).get("COREOS_RELEASE_VERSION") != version:
        problems.append(f"{agent.name}'s next boot picks {chosen and chosen.label} "
                        f"(successful={chosen and chosen.successful}, release {release}), not a good {version}")
    return problems
