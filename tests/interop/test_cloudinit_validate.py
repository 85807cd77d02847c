"""Our cloud-config validator against ``coreos-cloudinit --validate`` (issue 11), replaying
upstream's own test data from ``fixtures/cloudinit`` (coreos/coreos-cloudinit@f1f0405: the
``config/validate`` tests and the ``config`` tests; see ``fixtures/cloudinit/PROVENANCE.md``).

- ``validate_cases.json``: each document through ``validate()`` (entry point "validate", the
  header rule included) or ``validate_config()`` (entry point "rules": upstream's rule tests have
  no ``#cloud-config`` line).
- ``value_cases.json``: each value of a rule (``valid:`` pattern) in a minimal document; what is
  compared is that value's own "invalid value" entry, as upstream's value tests check only the
  pattern.  A window start is written with a length and the reverse (values both accept), since
  our rule that the two go together is a deliberate difference of its own.

What must agree: the entries as a set of (kind, line) (upstream's order is Go's map order), and
each of our messages on a (kind, line) names what upstream's names: the same key
(``incorrect type for "units[0]"``, ``unrecognized key "test"``), the same value
(``invalid value lol``), the same encoding; a deprecation gives upstream's reason word for word.
Otherwise our wording is ours on purpose: "map" and "list" where Go says "struct" and
"[]string"/"[]struct" ("integer" and "number" for "int" and "float64"), an explanation after
``invalid value X: ...``, PyYAML's wording of a YAML error, the file named in the /usr error.

Deliberate differences: ``DELIBERATE`` for cases of the fixtures and ``DERIVED`` for documents of
ours whose upstream answer is read from upstream's source (no upstream test shows them).  Each has
its reason and what we report instead, and is asserted to still differ, so a stale entry fails.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import cloudconfig as cc

FIXTURES = Path(__file__).parent / "fixtures" / "cloudinit"
CASES = json.loads((FIXTURES / "validate_cases.json").read_text())
VALUES = json.loads((FIXTURES / "value_cases.json").read_text())
UPSTREAM = "coreos/coreos-cloudinit@f1f0405:"


@dataclass(frozen=True)
class Difference:
    reason: str
    ours: frozenset          # the (kind, line) we report instead


QUIRK_323 = ("after a YAML error upstream still runs its rules on an empty node and adds "
             "'line 0: warning: incorrect type for \"\" (want struct)' (upstream bug, "
             "coreos/coreos-cloudinit#323); we report the YAML error alone")
GO_DURATION = ("window_length is a Go duration as locksmithd parses it (time.ParseDuration has no "
               "'d' unit, so locksmithd would refuse the window); upstream's pattern accepts it")

DELIBERATE = {
    UPSTREAM + "config/validate/validate_test.go:TestParseCloudConfig[1]":
        Difference(QUIRK_323, frozenset({("error", 1)})),
    UPSTREAM + "config/validate/validate_test.go:TestParseCloudConfig[2]":
        Difference(QUIRK_323, frozenset({("error", 2)})),
    UPSTREAM + "config/validate/validate_test.go:TestParseCloudConfig[3]":
        Difference(QUIRK_323, frozenset({("error", 3)})),
    "coreos/coreos-cloudinit#323 (issue, observed `coreos-cloudinit --validate` output)":
        Difference(QUIRK_323, frozenset({("error", 1)})),
    UPSTREAM + "config/locksmith_test.go:TestRebootWindowLength[1]": Difference(GO_DURATION, frozenset({("error", 5)})),
    UPSTREAM + "config/locksmith_test.go:TestRebootWindowLength[2]": Difference(GO_DURATION, frozenset({("error", 5)})),
}


@dataclass(frozen=True)
class Derived:
    """A document of ours: what upstream reports, read from its source (None: its validator fails
    internally and prints no report), and what we report, each as (kind, line, message)."""
    id: str
    config: str
    upstream: tuple | None
    ours: tuple
    reason: str


DERIVED = [
    Derived("best-effort",
            "#cloud-config\ncoreos:\n  update:\n    reboot_strategy: best-effort\n",
            (("error", 4, "invalid value best-effort"),), (),
            "the product requires best-effort and locksmithd has it; upstream's pattern dropped it (c36bcb8)"),
    Derived("window-start-alone",
            "#cloud-config\ncoreos:\n  locksmith:\n    window_start: Sun 04:00\n", (),
            (("error", 4, "window_start and window_length go together: set both or neither"),),
            "locksmithd refuses a window start without a length (and the reverse) at runtime; upstream "
            "checks each alone"),
    Derived("window-length-negative",
            "#cloud-config\ncoreos:\n  locksmith:\n    window_start: Sun 04:00\n    window_length: -1h\n", (),
            (("error", 5, "invalid value -1h: the length must be positive"),),
            "locksmithd refuses a negative length; upstream's pattern allows a sign"),
    Derived("usr-prefix-only",
            "#cloud-config\nwrite_files:\n  - path: /usrlocal/x\n",
            (("error", 3, "file cannot be written to a read-only filesystem"),), (),
            "upstream compares the directory with /usr as a string prefix, so /usrlocal counts as /usr; "
            "only /usr and below are read-only"),
    Derived("usr-itself",
            "#cloud-config\nwrite_files:\n  - path: /usr\n", (),
            (("error", 3, "file /usr is under /usr, which is read-only"),),
            "the agent refuses to write /usr and anything under it; upstream checks only the directory "
            "(/ for /usr itself), so the document passed and its write failed on the host"),
    Derived("usr-relative",
            "#cloud-config\nwrite_files:\n  - path: usr/lib/x\n", (),
            (("error", 3, "file usr/lib/x is under /usr, which is read-only"),),
            "a relative path is written under / (as upstream writes it), so usr/lib/x is /usr/lib/x; "
            "upstream's validator does not resolve it and passes it"),
    Derived("document-not-a-map",
            "#cloud-config\n- hostname: web\n", (),
            (("warning", 2, "incorrect type for the document (want map)"),),
            "upstream's decoder drops a document that is not a map and says nothing; it cannot be applied"),
    Derived("encoding-without-content",
            "#cloud-config\nwrite_files:\n  - path: /etc/x\n    encoding: base64\n",
            (("error", 0, 'content cannot be decoded as "base64"'),), (),
            "upstream decodes Go's placeholder for a missing value ('<invalid Value>') and reports it on "
            "line 0; missing content is an empty file, which decodes (gzip without content still fails)"),
    Derived("flow-mapping-line",
            "#cloud-config\ncoreos:\n  update: {reboot_strategy: false}\n",
            (("error", 0, "invalid value false"),), (("error", 3, "invalid value false"),),
            "upstream finds a key's line by searching the text for 'key:' at a line's start, which misses "
            "flow style (line 0); our lines come from the parser"),
    Derived("null-on-a-rule",
            "#cloud-config\ncoreos:\n  update:\n    reboot_strategy:\n", None,
            (("warning", 4, 'incorrect type for "reboot_strategy" (want string)'),),
            "a null (or a map or a list) where a value has a rule makes upstream's validator fail "
            "internally ('Failed while validating user_data', no report); we report the type warning"),
]

VALUE_DOCUMENTS = {    # key -> (document around {value}, the key's line)
    "coreos.locksmith.window_start":
        ("#cloud-config\ncoreos:\n  locksmith:\n    window_start: {value}\n    window_length: 1h\n", 4),
    "coreos.locksmith.window_length":
        ("#cloud-config\ncoreos:\n  locksmith:\n    window_start: '00:00'\n    window_length: {value}\n", 5),
    "coreos.update.reboot_strategy": ("#cloud-config\ncoreos:\n  update:\n    reboot_strategy: {value}\n", 4),
    "coreos.units[].command": ("#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      command: {value}\n", 5),
    "write_files[].encoding": ("#cloud-config\nwrite_files:\n  - path: /etc/a\n    encoding: {value}\n", 4),
    "write_files[].permissions": ("#cloud-config\nwrite_files:\n  - path: /etc/a\n    permissions: {value}\n", 4),
}


def report_of(case) -> cc.Report:
    run = cc.validate if case["entry_point"] == "validate" else cc.validate_config
    return run(case["config"])


def kinds_and_lines(entries) -> set:
    return {(e["kind"], e["line"]) if isinstance(e, dict) else (e.kind, e.line) for e in entries}


def names_the_same(ours: str, upstream: str) -> bool:
    """Our message names what upstream's names (see the module docstring)."""
    if upstream.startswith("invalid value "):
        return ours == upstream or ours.startswith(upstream + ": ")
    if upstream.startswith("deprecated key "):
        return ours == upstream
    return all(f'"{name}"' in ours for name in re.findall(r'"([^"]*)"', upstream))


def unnamed(report: cc.Report, upstream_entries) -> list:
    """Upstream's entries that none of ours on the same (kind, line) names."""
    return [u for u in upstream_entries
            if not any(e.kind == u["kind"] and e.line == u["line"] and names_the_same(e.message, u["message"])
                       for e in report.entries)]


@pytest.mark.parametrize("case", CASES, ids=[c["source"] for c in CASES])
def test_each_document_gets_upstreams_entries(case):
    report = report_of(case)
    ours, upstream = kinds_and_lines(report.entries), kinds_and_lines(case["entries"])
    difference = DELIBERATE.get(case["source"])
    if difference:
        assert ours != upstream, f"no longer differs, remove it from DELIBERATE: {difference.reason}"
        assert ours == difference.ours, str(report)
        return
    assert ours == upstream, f"ours:\n{report}\nupstream: {case['entries']}"
    assert unnamed(report, case["entries"]) == [], f"ours:\n{report}"


def value_entries(report: cc.Report) -> set:
    return {(e.kind, e.line) for e in report.entries if e.message.startswith("invalid value ")}


@pytest.mark.parametrize("case", VALUES, ids=[c["source"] for c in VALUES])
def test_each_value_is_accepted_or_refused_as_upstream(case):
    template, line = VALUE_DOCUMENTS[case["key"]]
    report = cc.validate(template.format(value=json.dumps(case["value"])))
    ours, upstream = value_entries(report), (set() if case["valid"] else {("error", line)})
    difference = DELIBERATE.get(case["source"])
    if difference:
        assert ours != upstream, f"no longer differs, remove it from DELIBERATE: {difference.reason}"
        assert ours == difference.ours, str(report)
        return
    assert ours == upstream, str(report)
    if not case["valid"]:
        assert unnamed(report, [{"kind": "error", "line": line, "message": f"invalid value {case['value']}"}]) == []


@pytest.mark.parametrize("case", DERIVED, ids=[d.id for d in DERIVED])
def test_each_derived_difference_still_differs(case):
    ours = {(e.kind, e.line, e.message) for e in cc.validate(case.config).entries}
    assert ours == set(case.ours), case.reason
    if case.upstream is not None:
        assert {e[:2] for e in ours} != {e[:2] for e in case.upstream}, \
            f"no longer differs, remove it from DERIVED: {case.reason}"


def test_every_deliberate_difference_is_a_case_of_the_fixtures():
    sources = {c["source"] for c in CASES} | {c["source"] for c in VALUES}
    assert set(DELIBERATE) <= sources
    assert len({d.id for d in DERIVED}) == len(DERIVED)


def test_the_fixtures_are_the_ones_the_readme_counts():
    assert (len(CASES), len(VALUES)) == (104, 57)
    assert all(c["entry_point"] in ("validate", "rules") for c in CASES)
