"""scripts/check_compose.py on the real docker-compose.yml and on copies with the web's process count broken."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from scripts import devstack
from scripts.check_compose import check
from scripts.webserver import WEBSOCKET_ARGS, missing_from

ROOT = Path(__file__).resolve().parents[2]


def copy_with_web_command(tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    doc["services"]["web"]["command"] = edit(list(doc["services"]["web"]["command"]))
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_compose_file_passes():
    assert check(ROOT / "docker-compose.yml") == []


def test_web_runs_fleet_web_processes_processes():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = doc["services"]["web"]["command"]
    assert command[command.index("--workers") + 1] == "${FLEET_WEB_PROCESSES:-2}"


def test_a_web_without_workers_is_reported(tmp_path):
    def drop(cmd):
        i = cmd.index("--workers")
        return cmd[:i] + cmd[i + 2:]
    assert check(copy_with_web_command(tmp_path, drop)) == [
        "web: command lacks --workers N (FLEET_WEB_PROCESSES web processes behind one port)"]


def test_a_web_with_a_bogus_process_count_is_reported(tmp_path):
    def bogus(cmd):
        cmd[cmd.index("--workers") + 1] = "many"
        return cmd
    assert check(copy_with_web_command(tmp_path, bogus)) == [
        "web: --workers 'many' is neither a number nor ${FLEET_WEB_PROCESSES:-N}"]


def test_a_web_that_compresses_websockets_is_reported(tmp_path):
    """uvicorn's default accepts per-message deflate: a zlib state per agent socket (scripts/webserver.py)."""
    def compressing(cmd):
        i = cmd.index("--ws-per-message-deflate")
        return cmd[:i] + cmd[i + 2:]
    assert check(copy_with_web_command(tmp_path, compressing)) == [
        "web: command lacks --ws-per-message-deflate false (scripts/webserver.py)"]


def test_a_dockerfile_whose_cmd_compresses_websockets_is_reported(tmp_path):
    path = copy_with_web_command(tmp_path, lambda cmd: cmd)
    dockerfile = tmp_path / "Dockerfile"
    text = dockerfile.read_text()
    assert '"--ws-per-message-deflate", "false"' in text
    dockerfile.write_text(text.replace('"--ws-per-message-deflate", "false"', '"--ws-per-message-deflate", "true"'))
    assert check(path) == ["Dockerfile: CMD lacks --ws-per-message-deflate false (scripts/webserver.py)"]


def test_make_run_passes_the_websocket_options():
    command = devstack.web_command(8000, 2)
    assert missing_from(command) == []
    assert WEBSOCKET_ARGS[-2:] == ["--ws-per-message-deflate", "false"]
