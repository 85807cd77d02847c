"""Middleware that keeps the ASGI chain async.

Django runs the middleware chain in async mode only when every middleware is async capable; one
sync-only middleware puts every request, async views included, through asgiref's shared sync thread
(the one the agents' consumers use for the database too, see fleetweb.asgi). An async long poll such
as the discovery service's watch then held that thread for its whole wait (up to 50 s): every other
request and every consumer's database call waited behind it."""
from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise (sync only in 6.x), async capable: a static file is served from the sync thread,
    anything else goes down the async chain."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        super().__init__(get_response)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            response = await sync_to_async(self.serve)(static_file, request)
            if response.streaming and not response.is_async:  # the file, read chunk by chunk off the loop
                response.streaming_content = _read_in_thread(iter(response.streaming_content))
            return response
        return await self.get_response(request)


async def _read_in_thread(chunks):
    done = object()
    while (chunk := await sync_to_async(next)(chunks, done)) is not done:
        yield chunk
