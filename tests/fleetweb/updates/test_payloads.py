"""Payload downloads: per-host signed URLs that expire, Range, streamed."""
import time

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from fleetweb.updates.models import payload_signature

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def release(make_release):
    return make_release("101.0.0", bytes(range(256)) * 4096)  # 1 MiB


@pytest.fixture
def host(web_group, make_host):
    return make_host(web_group)


def path_of(url):
    return url.split("://", 1)[1].split("/", 1)[1].join(["/", ""])


async def body(response):
    return b"".join([chunk async for chunk in response.streaming_content])


async def test_it_streams_the_whole_payload(release, host):
    r = await AsyncClient().get(path_of(release.download_url(host.pk)))
    assert r.status_code == 200 and r["Content-Length"] == str(release.size)
    assert await body(r) == release.path.read_bytes()


async def test_it_serves_ranges_for_resumed_downloads(release, host):
    url = path_of(release.download_url(host.pk))
    r = await AsyncClient().get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r["Content-Range"] == f"bytes 1000-{release.size - 1}/{release.size}"
    assert await body(r) == release.path.read_bytes()[1000:]
    r = await AsyncClient().get(url, headers={"Range": "bytes=10-19"})
    assert await body(r) == release.path.read_bytes()[10:20]
    r = await AsyncClient().get(url, headers={"Range": f"bytes={release.size}-"})
    assert r.status_code == 416


async def test_it_refuses_expired_or_tampered_links(release, host, other_group, make_host):
    expired = int(time.time()) - 1
    sig = payload_signature(release.pk, str(host.pk), expired)
    r = await AsyncClient().get(f"/payloads/{release.pk}/{host.pk}/{expired}/{sig}")
    assert r.status_code == 403
    good = path_of(release.download_url(host.pk))
    r = await AsyncClient().get(good[:-1] + ("0" if good[-1] != "0" else "1"))
    assert r.status_code == 403
    # A valid link for a host of another organization does not reach this organization's payload.
    outsider = await sync_to_async(make_host)(other_group)
    r = await AsyncClient().get(path_of(release.download_url(outsider.pk)))
    assert r.status_code == 404
