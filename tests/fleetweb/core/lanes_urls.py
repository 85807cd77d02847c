"""URLs of the concurrency tests: the real ones plus views a test controls (a view that blocks
until the test lets it go, a view that tells which database session served it)."""
from __future__ import annotations

import threading

from django.db import connection
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from fleetweb.urls import urlpatterns as real

entered = threading.Semaphore(0)   # released once per blocked view that started
release = threading.Event()        # set by the test: every blocked view returns


def blocked(request):
    entered.release()
    release.wait(timeout=120)
    return JsonResponse({"released": release.is_set()})


def session(request):
    with connection.cursor() as cursor:
        cursor.execute("select pg_backend_pid()" if connection.vendor == "postgresql" else "select 1")
        pid = cursor.fetchone()[0]
    return JsonResponse({"thread": threading.current_thread().name, "backend": pid})


urlpatterns = [path("_test/blocked", blocked), path("_test/session", session), *real]


cut = {"calls": 0, "raw": None, "backend": None}


@csrf_exempt
def cut_under_me(request):
    """The test cuts this request's database connection between two of its queries (first call)."""
    cut["calls"] += 1
    with connection.cursor() as cursor:
        cursor.execute("select pg_backend_pid()" if connection.vendor == "postgresql" else "select 1")
        backend = cursor.fetchone()[0]
    if cut["calls"] == 1:
        cut["raw"], cut["backend"] = connection.connection, backend
        entered.release()
        release.wait(timeout=120)
    with connection.cursor() as cursor:
        cursor.execute("select 2")
    return JsonResponse({"calls": cut["calls"], "backend": backend})


urlpatterns.insert(0, path("_test/cut", cut_under_me))
