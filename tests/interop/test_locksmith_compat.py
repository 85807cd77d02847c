"""The reboot semaphore against coreos/locksmith (issue 11): its reader, its transitions and its
key names, from ``fixtures/locksmith/cases.json`` (facts from locksmith's ``lock`` tests and code,
see ``fixtures/locksmith/PROVENANCE.md``).  Our ``agent.locksmith.Semaphore`` is the one shared
implementation (the agent, ``agent lock``, the locks API); the CLI's output is checked against a
real etcd in ``tests/agent/test_lock_cli.py``.

What we keep different on purpose is in ``DELIBERATE`` with the reason, each asserted to still
differ so a stale entry fails.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.locksmith import LockError, Semaphore, group_key

CASES = json.loads((Path(__file__).parent / "fixtures" / "locksmith" / "cases.json").read_text())
READS = [c for c in CASES if c["kind"] == "semaphore-read"]
OPS = [c for c in CASES if c["kind"] in ("semaphore-op", "semaphore-json") and "op" in c]
KEYS = [c for c in CASES if c["kind"] == "key" and "group" in c]

DELIBERATE = {
    "lock-again-same-holder-free-slot": "a holder that locks again keeps its slot and succeeds, as "
                                        "locksmithd treats \"holder exists\": the agent retries after a restart",
    "lock-again-same-holder-no-slot": "the same, with no free slot: the holder already has one",
    "unlock-not-held-empty": "unlocking a slot not held succeeds, as locksmithd treats \"holder does not "
                             "exist\": an agent that rebooted twice must not be stuck",
    "unlock-not-held-other": "the same",
    "set-max-negative": "a negative maximum allows no reboot and cannot be undone by unlocking: refused",
}


def run(case) -> tuple[bool, Semaphore | str]:
    """(ok, the semaphore after, or the error text) of a case's operation on its start value."""
    try:
        sem = Semaphore.from_json(case["start"])
        op = case["op"]
        if "lock" in op:
            return True, sem.locked(op["lock"])
        if "lock_sequence" in op:
            for holder in op["lock_sequence"]:
                sem = sem.locked(holder)
            return True, sem
        if "unlock" in op:
            return True, sem.unlocked(op["unlock"])
        if "set_max" in op:
            return True, sem.with_max(op["set_max"])
    except LockError as exc:
        return False, str(exc)
    raise AssertionError(f"unknown op {case['op']}")


def differences(case) -> list[str]:
    ok, got = run(case)
    want = case["expect"]
    wrong = []
    if want.get("ok", True) != ok or (not ok and "ok" not in want):
        wrong.append(f"ok={ok} ({got}), expected {want}")
    elif ok:
        if "value" in want and json.loads(got.to_json()) != {**json.loads(want["value"]),
                                                              "holders": json.loads(want["value"])["holders"] or []}:
            wrong.append(f"wrote {got.to_json()}, expected {want['value']}")
        for field in ("semaphore", "max"):
            if field in want and getattr(got, field) != want[field]:
                wrong.append(f"{field} {getattr(got, field)}, expected {want[field]}")
        if "holders" in want and sorted(got.holders) != sorted(want["holders"] or []):
            wrong.append(f"holders {got.holders}, expected {want['holders']}")
    elif "error" in want and want["error"].split(" at ")[0] not in got:
        wrong.append(f"error {got!r}, expected one naming {want['error']!r}")
    return wrong


@pytest.mark.parametrize("case", READS, ids=[c["id"] for c in READS])
def test_a_value_is_read_as_locksmith_reads_it(case):
    if case["expect"] == "error":
        with pytest.raises(LockError) as err:
            Semaphore.from_json(case["value"])
        assert err.value.code == "invalid"
        return
    sem = Semaphore.from_json(case["value"])
    want = case["expect"]
    assert (sem.semaphore, sem.max, sem.holders) == (want["semaphore"], want["max"], want["holders"] or [])


@pytest.mark.parametrize("case", OPS, ids=[c["id"] for c in OPS])
def test_a_transition_is_locksmiths(case):
    wrong = differences(case)
    if case["id"] in DELIBERATE:
        assert wrong, f"{case['id']} now matches upstream: drop it from DELIBERATE ({DELIBERATE[case['id']]})"
    else:
        assert wrong == [], f"{case['id']}: {wrong}"


@pytest.mark.parametrize("case", KEYS, ids=[c["id"] for c in KEYS])
def test_the_key_is_locksmiths(case):
    assert group_key(case["group"] or None, "") == case["expect"]["key"]


def test_every_deliberate_difference_names_a_case():
    assert set(DELIBERATE) <= {c["id"] for c in OPS}
