"""Validation as coreos-cloudinit --validate does it (issue 6 §2 and §7)."""
from __future__ import annotations

import base64
import gzip

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
    assert (4, "warning", 'deprecated key "etcd" (etcd is no longer shipped in Container Linux)') in got
    assert (8, "warning", 'incorrect type for "enable" (want bool)') in got
    assert cc.validate(doc).valid


def test_a_hyphenated_key_is_read_with_underscores_silently_and_still_checked():
    got = entries("#cloud-config\ncoreos:\n  update:\n    reboot-strategy: sometimes\n")
    assert got == [(4, "error", "invalid value sometimes")]


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
    assert (4, "error", 'content cannot be decoded as "zip"') in got     # no content: on the encoding's line
    assert (7, "error", 'content cannot be decoded as "base64"') in got


@pytest.mark.parametrize("path", ["/tmp/../usr/x", "/usr/lib/x", "/usr/", "//usr/share/y"])
def test_a_file_under_usr_is_an_error(path):
    got = entries(f"#cloud-config\nwrite_files:\n  - path: {path}\n    content: x\n")
    assert got[0][:2] == (3, "error") and "/usr" in got[0][2]


@pytest.mark.parametrize("path", ["/usrlocal/x", "relative/usr/x", "etc/x"])
def test_a_file_next_to_usr_or_relative_is_fine(path):
    assert entries(f"#cloud-config\nwrite_files:\n  - path: {path}\n") == []


@pytest.mark.parametrize("path", ["/usr", "usr/x", "../usr/x", "//usr/lib/x"])
def test_a_file_the_agent_would_write_under_usr_is_an_error(path):
    """The agent writes a relative path under / and refuses /usr and below; the validator applies the
    same rule (upstream's checks the directory as written, so these pass it and fail when written)."""
    got = entries(f"#cloud-config\nwrite_files:\n  - path: {path}\n")
    assert got == [(3, "error", f"file {path} is under /usr, which is read-only")]


def test_a_file_without_a_path_is_accepted():
    assert entries("#cloud-config\nwrite_files:\n  - content: x\n    permissions: '0644'\n") == []


@pytest.mark.parametrize("start,length,ok", [("14:00", "1h", True), ("Sat 04:00", "90m", True),
                                             ("Sun 0:0", "1h", True), ("25:00", "1h", False),
                                             ("sat", "1h", False), ("14:00", "1j", False),
                                             ("14:00", "1d", False), ("14:00", "-1h", False)])
def test_the_locksmith_window_uses_the_reboot_window_rules(start, length, ok):
    doc = f"#cloud-config\ncoreos:\n  locksmith:\n    window_start: '{start}'\n    window_length: '{length}'\n"
    assert cc.validate(doc).valid is ok


def test_a_window_start_alone_is_an_error():
    assert not cc.validate("#cloud-config\ncoreos:\n  locksmith:\n    window_start: '14:00'\n").valid


def test_a_yaml_syntax_error_is_reported_on_its_line():
    assert entries("#cloud-config\na:\na") == [(3, "error", "could not find expected ':'")]


def test_a_list_item_is_reported_on_its_dash_line():
    assert entries("#cloud-config\nusers:\n  -\n    - a\n  - 4\n") == [
        (3, "warning", 'incorrect type for "users[0]" (want map)'),
        (5, "warning", 'incorrect type for "users[1]" (want map)')]


def test_go_yaml_booleans_include_y_and_n_and_no_sexagesimal_numbers():
    assert entries("#cloud-config\ncoreos:\n  units:\n    - enable: Y\n      mask: n\n      runtime: on\n") == []
    assert entries("#cloud-config\ncoreos:\n  fleet:\n    verbosity: '2'\n    token_limit: 1:30\n")[1:] == [
        (4, "warning", 'incorrect type for "verbosity" (want integer)'),
        (5, "warning", 'incorrect type for "token_limit" (want integer)')]


def test_a_header_with_trailing_whitespace_is_a_cloud_config():
    assert entries("#cloud-config \t\r\nfoo: 1\n") == [(2, "warning", 'unrecognized key "foo"')]


@pytest.mark.parametrize("content,ignition", [('{"ignitionVersion": 1}', True),
                                              ('{"ignition": {"version": "2.2.0"}}', True),
                                              ('{"Ignition": {"Version": "3.0.0"}}', True),
                                              ('{"ignitionVersion": "1"}', False),
                                              ('{"ignition": {"version": 2}}', False),
                                              ('{"ignition": {}}', False)])
def test_an_ignition_config_gets_an_empty_report(content, ignition):
    assert (entries(content) == []) is ignition


@pytest.mark.parametrize("url,ok", [("https://discovery.etcd.io/abc", True), ("/v2/keys/_etcd", True),
                                    ("http://[fd00::1]:2379/t", True), ("disco", False),
                                    ("mailto:ops@example.com", False), ("http://host:port/t", False),
                                    ("'http://a b/t'", False), ("http://h/%zz", False)])
def test_the_etcd_discovery_url_is_an_absolute_uri_or_path(url, ok):
    got = entries(f"#cloud-config\ncoreos:\n  etcd:\n    discovery: {url}\n")
    assert ((4, "warning", "discovery URL is not valid") not in got) is ok


def test_binary_content_is_decoded_before_its_encoding_and_invalid_binary_is_a_yaml_error():
    doc = "#cloud-config\nwrite_files:\n  - path: /etc/a\n    encoding: base64\n    content: !!binary aGVsbG8K\n"
    assert entries(doc) == [(5, "error", 'content cannot be decoded as "base64"')]
    assert entries("#cloud-config\nhostname: !!binary abc\n") == [
        (1, "error", "!!binary value contains invalid base64 data")]


def test_gzip_content_is_checked_by_its_header_only():
    gz = base64.b64encode(gzip.compress(b"x" * 100)[:12]).decode()     # header, stream cut short
    doc = f"#cloud-config\nwrite_files:\n  - path: /etc/a\n    encoding: gzip+base64\n    content: {gz}\n"
    assert entries(doc) == []
    assert entries(doc.replace(gz, base64.b64encode(b"not gzip").decode()))[0][:2] == (5, "error")


def test_typed_sections_warn_unknown_and_deprecated_keys():
    doc = ("#cloud-config\ncoreos:\n  etcd2:\n    proxy: maybe\n    ca_file: /c\n    nope: 1\n"
           "  flannel:\n    interface: eth0\n  oem:\n    id: x\n  locksmith:\n    etcd_username: u\n"
           "    etcd_password: p\nmanage_etc_hosts: anything\nhostname:\n")
    assert entries(doc) == [
        (3, "warning", 'deprecated key "etcd2" (etcd2 is no longer shipped in Container Linux)'),
        (4, "error", "invalid value maybe"),
        (5, "warning", 'deprecated key "ca_file" (ca_file obsoleted by trusted_ca_file and client_cert_auth)'),
        (6, "warning", 'unrecognized key "nope"'),
        (15, "warning", 'incorrect type for "hostname" (want string)')]


def test_the_report_shape_matches_the_api_contract():
    data = cc.validate("#cloud-config\nfoo: 1\n").as_dict()
    assert data == {"valid": True, "entries": [{"line": 2, "kind": "warning", "message": 'unrecognized key "foo"'}]}
