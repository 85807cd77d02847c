"""Validation as coreos-cloudinit --validate does it (issue 6 §2 and §7)."""
from __future__ import annotations

import pytest

from agent import cloudconfig as cc


def entries(content):
    return [(e.line, e.kind, e.message) for e in cc.validate(content).sorted()]


def test_a_valid_update_strategy_has_no_entries():
    doc = "#cloud-config\ncoreos:\n  update:\n    reboot_strategy: etcd-lock\n    group: beta\n"
    report = cc.validate(doc)
    assert report.valid and report.entries == []


@pytest.mark.parametrize("strategy", ["reboot", "etcd-lock", "best-effort", "off"])
def test_every_strategy_is_valid_and_off_unquoted_is_not_a_boolean(strategy):
    assert cc.validate(f"#cloud-config\ncoreos:\n  update:\n    reboot_strategy: {strategy}\n").valid


def test_reboot_strategy_false_is_an_invalid_value_on_line_3_of_the_rules():
    # coreos-cloudinit's own rules test (no header line): line 3
    report = cc.validate_config("coreos:\n  update:\n    reboot_strategy: false")
    assert [(e.line, e.kind, e.message) for e in report.entries] == [(3, "error", "invalid value false")]


def test_line_numbers_count_the_header_line():
    assert entries("#cloud-config\ncoreos:\n  update:\n    reboot_strategy: false") == [
        (4, "error", "invalid value false")]
    assert str(cc.validate("#cloud-config\ncoreos:\n  update: {reboot_strategy: false}").entries[0]) == \
        "line 3: error: invalid value false"


@pytest.mark.parametrize("value", ["0744", "'0744'", "744", "'744'"])
def test_the_four_permission_forms_are_valid(value):
    doc = f"#cloud-config\nwrite_files:\n  - path: /etc/x\n    permissions: {value}\n"
    assert entries(doc) == []


@pytest.mark.parametrize("value", ["0800", "'9'", "'rwx'", "12345"])
def test_bad_permissions_are_errors(value):
    doc = f"#cloud-config\nwrite_files:\n  - path: /etc/x\n    permissions: {value}\n"
    assert entries(doc)[0][:2] == (4, "error")


def test_a_document_without_header_gets_the_header_error_on_line_1():
    assert entries("hostname: web\n") == [(1, "error", 'must be "#cloud-config" or begin with "#!"')]
    assert not cc.validate("hostname: web\n").valid


def test_a_script_is_accepted_as_it_is():
    assert cc.validate("#!/bin/bash\necho hi: [unbalanced\n").entries == []


def test_an_unknown_top_level_key_is_a_warning():
    report = cc.validate("#cloud-config\nhostname: web\nfoo: bar\n")
    assert [(e.line, e.kind, e.message) for e in report.entries] == [(3, "warning", 'unrecognized key "foo"')]
    assert report.valid


def test_wrong_types_and_deprecated_keys_are_warnings():
    doc = "#cloud-config\nhostname: [a, b]\ncoreos:\n  etcd:\n    name: x\n  units:\n    - name: a\n      enable: 3\n"
    got = entries(doc)
    assert (2, "warning", 'incorrect type for "hostname" (want string)') in got
    assert (4, "warning", 'deprecated key "etcd" (etcd2 is preferred)') in got
    assert (8, "warning", 'incorrect type for "enable" (want bool)') in got
    assert cc.validate(doc).valid


def test_a_hyphenated_key_is_info_and_still_checked():
    got = entries("#cloud-config\ncoreos:\n  update:\n    reboot-strategy: sometimes\n")
    assert got == [(4, "error", "invalid value sometimes"), (4, "info", "\"reboot-strategy\" uses '-' instead of '_'")]


def test_unit_command_lol_is_an_invalid_value():
    doc = "#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      command: lol\n"
    assert entries(doc) == [(5, "error", "invalid value lol")]


@pytest.mark.parametrize("cmd", cc.UNIT_COMMANDS)
def test_every_unit_command_is_valid(cmd):
    assert cc.validate(f"#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      command: {cmd}\n").valid


def test_bad_encoding_and_undecodable_content_are_errors():
    doc = "#cloud-config\nwrite_files:\n  - path: /etc/a\n    encoding: zip\n  - path: /etc/b\n    encoding: base64\n    content: '!!!'\n"
    got = entries(doc)
    assert (4, "error", "invalid value zip") in got
    assert (7, "error", 'content cannot be decoded as "base64"') in got


@pytest.mark.parametrize("path", ["/tmp/../usr/x", "/usr/lib/x", "/usr", "//usr/share/y"])
def test_a_file_under_usr_is_an_error(path):
    got = entries(f"#cloud-config\nwrite_files:\n  - path: {path}\n    content: x\n")
    assert got[0][:2] == (3, "error") and "/usr" in got[0][2]


def test_a_file_next_to_usr_is_fine():
    assert cc.validate("#cloud-config\nwrite_files:\n  - path: /usrlocal/x\n").valid


@pytest.mark.parametrize("start,length,ok", [("14:00", "1h", True), ("Sat 04:00", "90m", True),
                                             ("25:00", "1h", False), ("sat", "1h", False),
                                             ("14:00", "1j", False), ("14:00", "-1h", False)])
def test_the_locksmith_window_uses_the_reboot_window_rules(start, length, ok):
    doc = f"#cloud-config\ncoreos:\n  locksmith:\n    window_start: '{start}'\n    window_length: '{length}'\n"
    assert cc.validate(doc).valid is ok


def test_a_window_start_alone_is_an_error():
    assert not cc.validate("#cloud-config\ncoreos:\n  locksmith:\n    window_start: '14:00'\n").valid


def test_a_yaml_syntax_error_is_reported_on_its_line():
    assert entries("#cloud-config\na:\na") == [(3, "error", "could not find expected ':'")]


def test_the_report_shape_matches_the_api_contract():
    data = cc.validate("#cloud-config\nfoo: 1\n").as_dict()
    assert data == {"valid": True, "entries": [{"line": 2, "kind": "warning", "message": 'unrecognized key "foo"'}]}
