"""Merge precedence (organization → group → host) and variable substitution."""
from __future__ import annotations

from agent import cloudconfig as cc

ORG = """#cloud-config
hostname: org-name
ssh_authorized_keys: [ssh-ed25519 ORG]
coreos:
  update: {reboot_strategy: best-effort, group: stable}
  units:
    - name: app.service
      content: org
    - name: log.service
      command: start
write_files:
  - path: /etc/motd
    content: org motd
    permissions: 0644
"""
GROUP = """#cloud-config
ssh_authorized_keys: [ssh-ed25519 GROUP]
coreos:
  update: {reboot_strategy: off}
  units:
    - name: app.service
      content: group
write_files:
  - path: /etc/group-only
    content: g
"""
HOST = """#cloud-config
hostname: web-1
write_files:
  - path: /etc/motd
    content: host motd
"""


def test_scalars_of_the_most_specific_level_win_and_lists_append():
    data = cc.load(cc.merge(ORG, GROUP, HOST))
    assert data["hostname"] == "web-1"
    assert data["ssh_authorized_keys"] == ["ssh-ed25519 ORG", "ssh-ed25519 GROUP"]
    assert data["coreos"]["update"] == {"reboot_strategy": "off", "group": "stable"}


def test_units_and_files_with_the_same_name_or_path_are_replaced():
    data = cc.load(cc.merge(ORG, GROUP, HOST))
    assert data["coreos"]["units"] == [{"name": "app.service", "content": "group"},
                                       {"name": "log.service", "command": "start"}]
    assert data["write_files"] == [{"path": "/etc/motd", "content": "host motd"},
                                   {"path": "/etc/group-only", "content": "g"}]


def test_the_merged_document_is_valid_and_keeps_octal_permissions_and_off():
    merged = cc.merge(ORG, GROUP)
    assert merged.startswith("#cloud-config\n")
    assert cc.validate(merged).entries == []
    assert "reboot_strategy: off" in merged and "'0644'" in merged


def test_missing_levels_are_skipped():
    assert cc.load(cc.merge(None, "", HOST))["hostname"] == "web-1"
    assert cc.merge(None, None, None) == "#cloud-config\n"


def test_a_script_at_the_most_specific_level_is_the_document():
    assert cc.merge(ORG, "#!/bin/sh\necho hi\n") == "#!/bin/sh\necho hi\n"
    assert cc.load(cc.merge("#!/bin/sh\n", GROUP))["coreos"]["update"] == {"reboot_strategy": "off"}


def test_variables_are_substituted_from_the_reported_addresses():
    doc = "#cloud-config\ncoreos:\n  etcd2:\n    advertise-client-urls: http://$private_ipv4:2379\n" \
          "    listen: $public_ipv4 $public_ipv6 [$private_ipv6]\n"
    out = cc.substitute(doc, {"private_ipv4": "10.0.0.5", "public_ipv4": "203.0.113.7", "private_ipv6": "fd00::5"})
    assert "http://10.0.0.5:2379" in out
    assert "203.0.113.7 $public_ipv6 [fd00::5]" in out     # unknown ones stay as written
    assert cc.variables_used(doc) == ["private_ipv4", "private_ipv6", "public_ipv4", "public_ipv6"]
