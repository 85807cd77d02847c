"""Payload downloads: per-host signed URLs that expire, Range requests, streamed from disk.

Files are read in 256 KiB chunks by an async iterator, so a hundred agents downloading at once
hold a few chunks each in memory, never whole payloads.
"""
from __future__ import annotations

import asyncio
import re

from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

CHUNK = 256 * 1024
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _stream(path, start: int, length: int):
    async def chunks():
        f = await asyncio.to_thread(open, path, "rb")
        try:
            await asyncio.to_thread(f.seek, start)
            left = length
            while left > 0:
                data = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not data:
                    break
                left -= len(data)
                yield data
        finally:
            f.close()
    return chunks()


@require_GET
async def download(request, release_id: int, host_id, expires: int, sig: str):
    """An async view: a hundred agents downloading at once do not queue behind one thread."""
    from fleetweb.fleet.models import Host

    from .models import Release, payload_signature_ok

    if not payload_signature_ok(release_id, str(host_id), expires, sig):
        return HttpResponse("download link expired or invalid: the agent will get a new one\n", status=403,
                            content_type="text/plain")
    release = await Release.objects.filter(pk=release_id).only(
        "payload", "size", "sha256", "organization_id").afirst()
    if release is None or not await Host.objects.filter(pk=host_id,
                                                        organization_id=release.organization_id).aexists():
        raise Http404("no such payload")
    return ranged_file_response(request, release.path, release.size, etag=release.sha256)


def ranged_file_response(request, path, size: int, etag: str | None = None,
                         content_type: str = "application/octet-stream"):
    """200 or 206 for the request's Range header, streamed from ``path`` (416 when unsatisfiable)."""
    start, end = 0, size - 1
    status = 200
    header = request.headers.get("Range")
    if header:
        m = RANGE_RE.match(header.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return HttpResponse(status=416, headers={"Content-Range": f"bytes */{size}"})
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start = max(size - int(m.group(2)), 0)
        if start >= size or start > end:
            return HttpResponse(status=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    length = end - start + 1
    response = StreamingHttpResponse(_stream(path, start, length), status=status, content_type=content_type)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    if etag:
        response["ETag"] = f'"{etag}"'
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
