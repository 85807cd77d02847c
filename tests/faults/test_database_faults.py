"""The application's PostgreSQL connections terminated (pg_terminate_backend), a few times, in the
middle of a rollout: web and worker recover without a restart, API requests made meanwhile never
answer 5xx, and the rollout ends sound."""
from __future__ import annotations

import threading

import httpx
from django.db import connection

from . import timeline
from .conftest import ROLLOUT_TIMEOUT, VERSION, wait_for, wait_mid_rollout

TERMINATIONS = 3
PATHS = ("/api/v1/rollouts/", "/api/v1/hosts/", "/api/v1/groups/", "/api/v1/events/")


def terminate_app_connections() -> int:
    """Every other session on the test database ends now (the application's, not this test's)."""
    with connection.cursor() as cursor:
        cursor.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                       "where datname = current_database() and pid <> pg_backend_pid()")
        return len(cursor.fetchall())


def app_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("select count(*) from pg_stat_activity where datname = current_database() "
                       "and pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def test_database_connections_terminated_mid_rollout_are_survived_without_a_restart_or_a_5xx(fault_stack, payload):
    s = fault_stack
    [_beat, worker] = s.workers
    agents = s.spawn_fleet("db")
    web = s.webs[0].proc
    s.publish(payload)
    wait_mid_rollout()

    answers: list[tuple[int, str, int, str]] = []   # (termination round, path, status, body)
    round_ = [0]
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=s.url, headers=dict(s.api.headers), timeout=30) as client:
            while not stop.is_set():
                for path in PATHS:
                    r = client.get(path)
                    answers.append((round_[0], path, r.status_code, r.text[:300]))
                stop.wait(0.05)  # pacing: a steady trickle of requests, not a benchmark

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        for i in range(1, TERMINATIONS + 1):
            round_[0] = i
            assert terminate_app_connections() > 0
            # Recovered: the web process answered after it, and the application is connected again.
            wait_for(lambda i=i: any(a[0] == i and a[2] == 200 for a in answers) and app_connections() > 0,
                     timeout=30, what=f"an answer and a connection after termination {i}")
        timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    finally:
        stop.set()
        poller.join(60)

    errors = [a for a in answers if a[2] >= 500]
    assert not errors, f"{len(errors)} of {len(answers)} API answers were 5xx, e.g. {errors[:3]}"
    assert web.poll() is None and worker.poll() is None, "the web process or the worker died"
    assert s.webs[0].proc is web and s.workers[-1] is worker  # nothing was restarted
    timeline.check(VERSION, agents)
