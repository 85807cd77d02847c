"""update.conf rewriting (agent/updateconf.py)."""
from __future__ import annotations

import os

from agent import updateconf


def test_it_replaces_keys_in_place_keeps_other_lines_and_appends_missing_keys_sorted(tmp_path):
    path = tmp_path / "update.conf"
    path.write_text("# fleet settings\nGROUP=stable\n\nLOCKSMITHD_ENDPOINT=http://etcd:2379\nSERVER=https://old\n")
    changed = updateconf.rewrite(path, {"GROUP": "beta", "SERVER": "https://new", "REBOOT_STRATEGY": "etcd-lock",
                                        "A_KEY": "x"})
    assert changed
    assert path.read_text() == ("# fleet settings\nGROUP=beta\n\nLOCKSMITHD_ENDPOINT=http://etcd:2379\n"
                                "SERVER=https://new\nA_KEY=x\nREBOOT_STRATEGY=etcd-lock\n")
    assert updateconf.read(path) == {"GROUP": "beta", "LOCKSMITHD_ENDPOINT": "http://etcd:2379",
                                     "SERVER": "https://new", "A_KEY": "x", "REBOOT_STRATEGY": "etcd-lock"}


def test_it_does_not_touch_commented_keys_and_reports_no_change(tmp_path):
    path = tmp_path / "update.conf"
    path.write_text("#GROUP=alpha\nGROUP=beta\n")
    assert not updateconf.rewrite(path, {"GROUP": "beta"})
    assert updateconf.rewrite(path, {"GROUP": "stable"})
    assert path.read_text() == "#GROUP=alpha\nGROUP=stable\n"


def test_it_creates_a_missing_file_and_keeps_the_mode_of_an_existing_one(tmp_path):
    path = tmp_path / "etc" / "coreos" / "update.conf"
    assert updateconf.read(path) == {}
    updateconf.rewrite(path, {"REBOOT_STRATEGY": "off", "GROUP": "alpha"})
    assert path.read_text() == "GROUP=alpha\nREBOOT_STRATEGY=off\n"
    os.chmod(path, 0o640)
    updateconf.rewrite(path, {"GROUP": "beta"})
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["update.conf"]     # no temp files left


def test_it_reads_quoted_values_and_drops_duplicates_on_rewrite(tmp_path):
    path = tmp_path / "update.conf"
    path.write_text('GROUP="beta"\nGROUP=alpha\n')
    assert updateconf.read(path)["GROUP"] == "alpha"
    updateconf.rewrite(path, {"GROUP": "stable"})
    assert path.read_text() == "GROUP=stable\n"
