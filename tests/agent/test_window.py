"""Reboot window parsing (agent/window.py), DESIGN §4 vectors."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from agent.window import parse_duration, parse_window


@pytest.mark.parametrize("start,length,weekday,hour,minute,minutes", [
    ("14:00", "1h", None, 14, 0, 60),
    ("04:30", "90m", None, 4, 30, 90),
    ("Sat 14:00", "1h30m", 5, 14, 0, 90),
    ("sun 00:00", "24h", 6, 0, 0, 24 * 60),
    ("THU 23:59", "1.5h", 3, 23, 59, 90),
    ("9:05", "23h59m", None, 9, 5, 23 * 60 + 59),
    ("Sun 0:0", "1h", 6, 0, 0, 60),                 # one digit, as locksmithd reads it
    ("007:005", "1h", None, 7, 5, 60),              # leading zeros, as locksmithd and coreos-cloudinit
])
def test_it_parses_valid_windows(start, length, weekday, hour, minute, minutes):
    w = parse_window(start, length)
    assert (w.weekday, w.hour, w.minute, w.length) == (weekday, hour, minute, timedelta(minutes=minutes))


def test_it_treats_neither_as_no_window_and_one_of_them_as_an_error():
    assert parse_window(None, None) is None
    assert parse_window("", " ") is None
    with pytest.raises(ValueError, match="length is set but the start is not"):
        parse_window(None, "1h")
    with pytest.raises(ValueError, match="start is set but the length is not"):
        parse_window("14:00", "")


@pytest.mark.parametrize("start,length,message", [
    ("25:00", "1h", "hour 25"),
    ("23:61", "1h", "minute 61"),
    ("14", "1h", "not HH:MM"),
    ("foo 14:00", "1h", "unknown day 'foo'"),
    ("sat 14:00 1234", "1h", "must be 'HH:MM' or 'Ddd HH:MM'"),
    ("sat", "1h", "day but no time"),
    ("14:00", "1j", "not a Go duration"),
    ("14:00", "1d", "not a Go duration"),
    ("1:234", "1h", "not HH:MM"),
    ("14:00", "-1h", "must be positive"),
    ("14:00", "24h", "daily window must be shorter than 24h"),
    ("sat 14:00", "168h", "weekly window must be shorter than 168h"),
])
def test_it_rejects_invalid_windows_with_a_message_naming_the_problem(start, length, message):
    with pytest.raises(ValueError, match=message):
        parse_window(start, length)


def test_it_parses_go_durations():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1h0m30s") == timedelta(seconds=3630)
    assert parse_duration("0") == timedelta(0)
    for bad in ("", "h", "1", "1 h", "1h 30m", "abc"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_it_knows_whether_a_daily_window_is_open_and_when_it_opens_next():
    w = parse_window("23:00", "2h")
    assert w.contains(datetime(2024, 5, 1, 23, 30))
    assert w.contains(datetime(2024, 5, 2, 0, 59))            # spans midnight
    assert not w.contains(datetime(2024, 5, 2, 1, 0))
    assert w.next_start(datetime(2024, 5, 2, 1, 0)) == datetime(2024, 5, 2, 23, 0)
    assert w.next_start(datetime(2024, 5, 2, 23, 0)) == datetime(2024, 5, 2, 23, 0)
    assert w.wait(datetime(2024, 5, 2, 22, 0)) == timedelta(hours=1)


def test_it_knows_whether_a_weekly_window_is_open_and_when_it_opens_next():
    w = parse_window("Sat 14:00", "1h")                         # 2024-05-04 is a Saturday
    assert w.contains(datetime(2024, 5, 4, 14, 30))
    assert not w.contains(datetime(2024, 5, 4, 15, 0))
    assert not w.contains(datetime(2024, 5, 5, 14, 30))
    assert w.next_start(datetime(2024, 5, 1, 9, 0)) == datetime(2024, 5, 4, 14, 0)
    assert w.next_start(datetime(2024, 5, 4, 15, 0)) == datetime(2024, 5, 11, 14, 0)
