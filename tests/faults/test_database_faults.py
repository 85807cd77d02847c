"""The application's PostgreSQL connections terminated (pg_terminate_backend), a few times, in the
middle of a rollout: web and worker recover without a restart, API requests made meanwhile never
answer 500, and the rollout ends sound.

Each cut comes while API requests are running (their API key lookups wait on a lock this test holds
for that moment), and a client keeps asking the API between the cuts (a connection that died between
two requests is the easy case)."""
from __future__ import annotations

import threading

import httpx
from django.db import connection, transaction

from fleetweb.tenancy.models import ApiKey

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


def api_requests_waiting() -> int:
    """Application queries waiting for the lock on the API keys table (API requests authenticating)."""
    with connection.cursor() as cursor:
        cursor.execute("select pg_stat_clear_snapshot()")  # in a transaction the view is a snapshot
        cursor.execute("select count(*) from pg_stat_activity where datname = current_database() "
                       "and pid <> pg_backend_pid() and wait_event_type = 'Lock' and query like %s",
                       [f"%{ApiKey._meta.db_table}%"])
        return cursor.fetchone()[0]


def cut_during_requests(client: httpx.Client, path: str, running: int) -> httpx.Response:
    """Terminate the application's connections while API requests are running: every request's API
    key lookup waits on a lock this test holds, and the cut comes once RUNNING of them wait (ours, on
    PATH, and the other clients')."""
    answer: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answer.append(client.get(path)))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"lock table {connection.ops.quote_name(ApiKey._meta.db_table)} in access exclusive mode")
        request.start()
        wait_for(lambda: api_requests_waiting() >= running, timeout=30, what=f"{running} API requests running")
        assert terminate_app_connections() > 0
    request.join(60)
    assert answer, f"no answer to {path}"
    return answer[0]


def test_database_connections_terminated_mid_rollout_are_survived_without_a_restart_or_a_500(fault_stack, payload):
    s = fault_stack
    [_beat, worker] = s.workers
    agents = s.spawn_fleet("db")
    web = s.webs[0].proc
    s.publish(payload)
    wait_mid_rollout(agents, payload)

    answers: list[tuple[int, str, int, str]] = []   # (cut, path, status, body)
    cut = [0]
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=s.url, headers=dict(s.api.headers), timeout=30) as client:
            while not stop.is_set():
                for path in PATHS:
                    r = client.get(path)
                    answers.append((cut[0], path, r.status_code, r.text[:300]))
                stop.wait(0.05)  # pacing: a steady trickle of requests, not a benchmark

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with httpx.Client(base_url=s.url, headers=dict(s.api.headers), timeout=60) as client:
            for i in range(1, TERMINATIONS + 1):
                cut[0] = i
                path = PATHS[i % len(PATHS)]
                r = cut_during_requests(client, path, running=2)  # ours and the poller's
                answers.append((i, f"{path} (running at the cut)", r.status_code, r.text[:300]))
                # Recovered: the web process answered after the cut, and the application is connected again.
                wait_for(lambda i=i: any(a[0] == i and a[2] == 200 for a in answers) and app_connections() > 0,
                         timeout=30, what=f"an answer and a connection after cut {i}")
        timeline.wait_finished(VERSION, ROLLOUT_TIMEOUT)
    finally:
        stop.set()
        poller.join(60)

    errors = [a for a in answers if a[2] == 500]
    assert not errors, f"{len(errors)} of {len(answers)} API answers were 500: {[a[:3] for a in errors]}"
    assert web.poll() is None and worker.poll() is None, "the web process or the worker died"
    assert s.webs[0].proc is web and s.workers[-1] is worker  # nothing was restarted
    timeline.check(VERSION, agents)
