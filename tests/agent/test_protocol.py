"""The wire protocol as the agent uses it (agent/protocol.py)."""
from __future__ import annotations

import json

import pytest

from agent import protocol
from agent.protocol import ProtocolError


def _hello(**over):
    fields = dict(machine_id="m", boot_id="b", hostname="h", agent_version="0.1.0", version="1.0.0",
                  partitions=[{"label": "USR-A", "number": 3, "version": "1.0.0", "priority": 1, "tries": 0,
                               "successful": True, "active": True}],
                  update_status="IDLE", group="stable", reboot_strategy="best-effort", policy_revision=3)
    fields.update(over)
    return fields


def test_it_round_trips_a_hello_and_a_policy():
    text = protocol.encode("hello", "agent", **_hello())
    assert protocol.decode(text, "agent") == {"type": "hello", **_hello()}
    policy = protocol.encode("policy", "server", revision=4, group="web", channel="beta", reboot_strategy="off",
                             heartbeat_interval=0.5)
    assert protocol.decode(policy, "server")["channel"] == "beta"


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"no_type": 1}', '{"type": ""}', '{"type": 5}', "\xff"])
def test_it_rejects_malformed_frames(text):
    with pytest.raises(ProtocolError) as exc:
        protocol.decode(text, "server")
    assert exc.value.code == protocol.ERR_MALFORMED


def test_it_rejects_oversized_frames_before_parsing():
    text = json.dumps({"type": "ping", "nonce": "x" * protocol.MAX_FRAME_BYTES})
    with pytest.raises(ProtocolError) as exc:
        protocol.decode(text, "server")
    assert exc.value.code == protocol.ERR_TOO_LARGE


@pytest.mark.parametrize("text", [
    json.dumps({"type": "status", "update_status": "IDLE", "version": "1.0\u0000"}),
    json.dumps({"type": "status", "update_status": "IDLE", "version": "1.0\u0000"}).encode(),
    json.dumps({"type": "event", "kind": "x", "data": {"deep": ["a\u0000"]}}),
])
def test_it_rejects_nul_characters_in_any_string(text):
    with pytest.raises(ProtocolError) as exc:
        protocol.decode(text, "agent")
    assert exc.value.code == protocol.ERR_INVALID
    assert "NUL" in exc.value.message


def test_it_rejects_unknown_types_and_types_of_the_other_side():
    for text in ('{"type": "launch"}', '{"type": "hello"}'):
        with pytest.raises(ProtocolError) as exc:
            protocol.decode(text, "server")
        assert exc.value.code == protocol.ERR_UNKNOWN_TYPE


@pytest.mark.parametrize("over", [
    {"machine_id": 5}, {"partitions": "USR-A"}, {"policy_revision": True}, {"update_status": "NAPPING"},
    {"partitions": [{"label": "USR-A", "number": "3", "priority": 1, "tries": 0, "successful": True,
                     "active": True}]},
    {"partitions": [{"label": "USR-A", "number": 3, "priority": 1, "tries": 0, "successful": 1, "active": True}]},
])
def test_it_rejects_wrong_field_types(over):
    with pytest.raises(ProtocolError) as exc:
        protocol.encode("hello", "agent", **_hello(**over))
    assert exc.value.code == protocol.ERR_INVALID


def test_it_rejects_a_policy_with_an_unknown_strategy_and_a_command_it_does_not_know():
    with pytest.raises(ProtocolError):
        protocol.decode('{"type":"policy","revision":1,"group":"g","channel":"c","reboot_strategy":"yolo"}', "server")
    with pytest.raises(ProtocolError):
        protocol.decode('{"type":"command","command":"format-disk"}', "server")
