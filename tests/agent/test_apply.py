"""Applying a full document to a scratch root: the resulting tree, and a second apply changes nothing."""
from __future__ import annotations

import base64
import gzip
import os
import stat
from pathlib import Path

import pytest

from agent import apply, cloudconfig
from agent.host import Host

GZ = base64.b64encode(gzip.compress(b"compressed\n")).decode()
DOC = f"""#cloud-config
hostname: web-1
manage_etc_hosts: localhost
ssh_authorized_keys:
  - ssh-ed25519 AAAACORE core@laptop
users:
  - name: deploy
    gecos: Deployer
    passwd: $6$salt$hash
    groups: [docker]
    ssh_authorized_keys: [ssh-ed25519 AAAADEPLOY deploy@ci]
write_files:
  - path: /etc/motd
    content: hello
    permissions: 0600
    owner: deploy:docker
  - path: /etc/plain-b64
    encoding: b64
    content: {base64.b64encode(b"b64 text").decode()}
    permissions: '744'
  - path: /etc/gz
    encoding: gzip+base64
    content: {GZ}
  - path: /opt/numeric
    content: x
    owner: "1234:5678"
coreos:
  update:
    group: beta
    reboot_strategy: off
    server: https://updates.example/v1/update/
  locksmith:
    endpoint: http://10.0.0.1:2379
    group: web
    window_start: Sun 04:00
    window_length: 1h
  units:
    - name: app.service
      command: start
      enable: true
      content: |
        [Service]
        ExecStart=/usr/bin/docker run --rm nginx
        [Install]
        WantedBy=multi-user.target
      drop_ins:
        - name: 10-env.conf
          content: |
            [Service]
            Environment=A=1
    - name: bad.service
      mask: true
    - name: scratch.service
      runtime: true
      content: "[Service]\\nExecStart=/bin/true\\n"
"""


@pytest.fixture
def host(tmp_path):
    root = tmp_path / "root"
    (root / "etc/coreos").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndocker:x:233:\n")
    (root / "etc/coreos/update.conf").write_text("# keep me\nGROUP=stable\n")
    return Host(root=root, state_dir=tmp_path / "state")


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = "/" + os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(st.st_mode & 0o7777), st.st_uid, st.st_gid)
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("file", oct(st.st_mode & 0o7777), st.st_uid, st.st_gid, fh.read())
    return out




def test_a_full_document_gives_the_expected_tree(host, tmp_path):
    result = apply.apply(host, DOC, revision=3, state_dir=tmp_path / "state")
    assert result.errors == []
    t = tree(host.root)
    r = host.root
    assert (r / "etc/passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/bin/bash", "deploy:x:1000:1000:Deployer:/home/deploy:/bin/bash",
        "core:x:500:500::/home/core:/bin/bash"]
    assert (r / "etc/group").read_text().splitlines() == ["root:x:0:", "docker:x:233:deploy", "deploy:x:1000:",
                                                          "core:x:500:"]
    shadow = (r / "etc/shadow").read_text().splitlines()
    assert shadow[0].startswith("deploy:$6$salt$hash:") and shadow[1].startswith("core:*:")
    assert t["/etc/shadow"][1] == "0o640"
    assert t["/home/deploy"][:4] == ("dir", "0o755", 1000, 1000)
    assert t["/home/deploy/.ssh"][:4] == ("dir", "0o700", 1000, 1000)
    assert t["/home/deploy/.ssh/authorized_keys"] == ("file", "0o600", 1000, 1000, b"ssh-ed25519 AAAADEPLOY deploy@ci\n")
    assert t["/home/core/.ssh/authorized_keys"] == ("file", "0o600", 500, 500, b"ssh-ed25519 AAAACORE core@laptop\n")
    assert t["/etc/hostname"][4] == b"web-1\n"
    assert t["/etc/hosts"][4] == b"127.0.0.1 localhost\n::1 localhost\n127.0.0.1 web-1\n"
    assert t["/etc/motd"] == ("file", "0o600", 1000, 233, b"hello")
    assert t["/etc/plain-b64"][1:] == ("0o744", 0, 0, b"b64 text")
    assert t["/etc/gz"][1:] == ("0o644", 0, 0, b"compressed\n")
    assert t["/opt/numeric"][2:4] == (1234, 5678)
    assert (r / "etc/coreos/update.conf").read_text() == (
        "# keep me\nGROUP=beta\nREBOOT_STRATEGY=off\nSERVER=https://updates.example/v1/update/\n")
    assert (r / "etc/systemd/system/locksmithd.service.d/20-cloudinit.conf").read_text() == (
        '[Service]\nEnvironment="LOCKSMITHD_ENDPOINT=http://10.0.0.1:2379"\nEnvironment="LOCKSMITHD_GROUP=web"\n'
        'Environment="LOCKSMITHD_REBOOT_WINDOW_START=Sun 04:00"\nEnvironment="LOCKSMITHD_REBOOT_WINDOW_LENGTH=1h"\n')
    assert t["/etc/systemd/system/app.service"][4].startswith(b"[Service]\nExecStart=/usr/bin/docker run")
    assert t["/etc/systemd/system/app.service.d/10-env.conf"][4] == b"[Service]\nEnvironment=A=1\n"
    assert t["/etc/systemd/system/multi-user.target.wants/app.service"] == ("link", "/etc/systemd/system/app.service")
    assert t["/etc/systemd/system/bad.service"] == ("link", "/dev/null")
    assert "/etc/systemd/system/scratch.service" not in t
    assert t["/run/systemd/system/scratch.service"][4] == b"[Service]\nExecStart=/bin/true\n"
    assert host.systemctl_calls() == [["daemon-reload"], ["start", "app.service"]]
    assert result.commands == [["daemon-reload"], ["start", "app.service"]]


def test_a_second_apply_changes_nothing(host, tmp_path):
    apply.apply(host, DOC, revision=3, state_dir=tmp_path / "state")
    before = tree(host.root)
    mtimes = {p: os.lstat(os.path.join(host.root, p.lstrip("/"))).st_mtime_ns for p in before}
    again = apply.apply(host, DOC, revision=3, state_dir=tmp_path / "state")
    assert again.skipped and again.changed == [] and again.commands == []
    # Even without the state file (forced re-apply of the same document): no rewrite, no command.
    forced = apply._Applier(host, apply.Result(revision=3), new_revision=False)
    forced.run(DOC)
    assert forced.result.changed == [] and forced.result.commands == [] and forced.result.errors == []
    assert tree(host.root) == before
    assert {p: os.lstat(os.path.join(host.root, p.lstrip("/"))).st_mtime_ns for p in before} == mtimes
    assert host.systemctl_calls() == [["daemon-reload"], ["start", "app.service"]]


def test_a_bad_item_is_reported_and_the_others_apply(host, tmp_path):
    doc = "#cloud-config\nwrite_files:\n  - path: /etc/a\n    owner: nobody-here\n  - path: /etc/b\n    content: ok\n"
    result = apply.apply(host, doc, revision=1, state_dir=tmp_path / "state")
    assert result.errors == ["write_files /etc/a: unknown user 'nobody-here' in the root's /etc/passwd"]
    assert (host.root / "etc/b").read_text() == "ok"
    assert apply.load_state(tmp_path / "state")["errors"] == result.errors


def test_binary_content_is_written_decoded_and_then_decoded_by_its_encoding(host, tmp_path):
    """!!binary is decoded by the YAML layer first, as coreos-cloudinit does (the validator agrees)."""
    gz = base64.b64encode(gzip.compress(b"inflated\n")).decode()
    doc = ("#cloud-config\nwrite_files:\n  - path: /etc/raw\n    content: !!binary aGVsbG8K\n"
           f"  - path: /etc/gz\n    encoding: gzip\n    content: !!binary {gz}\n"
           "  - path: /etc/b64\n    encoding: base64\n    content: !!binary YUdWc2JHOEsK\n")
    assert cloudconfig.validate(doc).entries == []
    result = apply.apply(host, cloudconfig.merge(doc), revision=1, state_dir=tmp_path / "state")
    assert result.errors == []
    assert (host.root / "etc/raw").read_bytes() == b"hello\n"
    assert (host.root / "etc/gz").read_bytes() == b"inflated\n"
    assert (host.root / "etc/b64").read_bytes() == b"hello\n"


def test_a_new_revision_runs_only_what_changed(host, tmp_path):
    doc = "#cloud-config\ncoreos:\n  units:\n    - name: a.service\n      content: one\n"
    apply.apply(host, doc, revision=1, state_dir=tmp_path / "state")
    assert host.systemctl_calls() == [["daemon-reload"]]
    apply.apply(host, doc.replace("one", "two"), revision=2, state_dir=tmp_path / "state")
    assert host.systemctl_calls() == [["daemon-reload"], ["daemon-reload"]]
    assert (host.root / "etc/systemd/system/a.service").read_text() == "two"


def test_update_settings_feed_update_conf_over_the_policy(tmp_path):
    assert apply.update_settings("#cloud-config\ncoreos:\n  update:\n    reboot_strategy: off\n") == \
        {"REBOOT_STRATEGY": "off"}
    assert apply.locksmith_dropin({}) == ""


def test_an_alias_bomb_is_refused_and_reported_not_applied(host, tmp_path):
    """issue 9 §5: the agent parses with the same node budget (fails on main before this fix)."""
    bomb = (Path(__file__).resolve().parents[1] / "fixtures/cloudconfig/bomb_merge.yaml").read_text()
    before = tree(host.root)
    result = apply.apply(host, bomb + "hostname: pwned\n", revision=7, state_dir=tmp_path / "state")
    limit = cloudconfig.MAX_NODES * cloudconfig.MERGE_FACTOR
    assert len(result.errors) == 1
    assert f"document expands to more than {limit} nodes (aliases)" in result.errors[0]
    assert tree(host.root) == before
    assert apply.load_state(tmp_path / "state")["errors"] == result.errors


def test_a_relative_path_is_written_under_the_root_as_coreos_cloudinit_does(host, tmp_path):
    """The validator accepts a relative write_files path (coreos-cloudinit writes path.Join(root, path));
    the agent refused it ("path must be absolute"), so a valid document failed to apply."""
    doc = ("#cloud-config\nwrite_files:\n  - path: etc/motd\n    content: hi\n"
           "  - path: ../../etc/issue\n    content: climb\n")
    assert cloudconfig.validate(doc).entries == []
    result = apply.apply(host, doc, revision=1, state_dir=tmp_path / "state")
    assert result.errors == []
    assert (host.root / "etc/motd").read_text() == "hi"
    assert (host.root / "etc/issue").read_text() == "climb"  # ".." stops at the root
    # What the validator refuses (a path under /usr however written) the agent refuses too, and a
    # file without a path (valid, as upstream) cannot be written: each is reported, nothing written.
    bad = "#cloud-config\nwrite_files:\n  - path: ../usr/x\n    content: no\n  - content: nowhere\n"
    assert [str(e) for e in cloudconfig.validate(bad).entries] == ["line 3: error: file ../usr/x is under /usr, which is read-only"]
    result = apply.apply(host, bad, revision=2, state_dir=tmp_path / "state")
    assert not (host.root / "usr/x").exists() and not (tmp_path / "usr").exists()
    assert result.errors == ["write_files ../usr/x: /usr is read-only", "write_files ?: a file needs a path"]


def test_gzip_content_that_inflates_past_the_limit_is_not_written(host, tmp_path):
    """A few KiB of gzip can inflate to gigabytes on the host's disk: the agent stops at
    cloudconfig.MAX_INFLATED and reports the file; the others apply."""
    bomb = base64.b64encode(gzip.compress(b"\0" * (cloudconfig.MAX_INFLATED + 1))).decode()
    assert len(bomb) < 200_000
    doc = (f"#cloud-config\nwrite_files:\n  - path: /etc/bomb\n    encoding: gz+b64\n    content: {bomb}\n"
           "  - path: /etc/fine\n    encoding: gzip+base64\n    content: " + base64.b64encode(gzip.compress(b"ok")).decode() + "\n")
    result = apply.apply(host, doc, revision=1, state_dir=tmp_path / "state")
    assert result.errors == ["write_files /etc/bomb: content cannot be decoded as gz+b64: it inflates to more than 64 MiB"]
    assert not (host.root / "etc/bomb").exists()
    assert (host.root / "etc/fine").read_bytes() == b"ok"
