"""Answers compressed where the request's ``Accept-Encoding`` asks for gzip or deflate, as
Triton's HTTP server does (tritonclient's ``response_compression_algorithm``).

Not Starlette's ``GZipMiddleware``: it knows gzip only, takes any ``Accept-Encoding``
holding the letters "gzip" as a yes (``gzip;q=0`` included), and compresses at level 9,
which took 120 ms for the 400 KB answer to 10,000 instances; level 1 takes 2 ms and makes
it 5x smaller where level 9 makes it 6.7x (bench/compression.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Preferred first where the client weighs several alike; "deflate" is the zlib format
# (RFC 9110), which tritonclient and httpx read.
CODINGS = ("gzip", "deflate")
_WINDOW_BITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
# What is worth compressing: the JSON answers, V2 binary answers (keys and labels are text),
# scored CSV and JSON Lines files, the API page. A Parquet file is compressed already.
_COMPRESSIBLE = ("application/json", "application/octet-stream", "application/jsonl", "text/")
# Bodies this large are compressed in a thread (zlib lets go of the GIL), as Starlette does
# from 128 KiB: the event loop serves other requests meanwhile.
_THREAD_BYTES = 128 * 1024


def chosen_coding(accept_encoding: str | None, offered: Iterable[str] = CODINGS) -> str | None:
    """The coding of ``offered`` an ``Accept-Encoding`` value weighs highest, or None for
    the body as it is: where none is acceptable (q=0, or not named and no ``*``), or where
    ``identity`` is named with a higher weight. Ties go to the order of ``offered``."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    weight = 0.0  # a weight that is not a number is not a yes
        weights[name] = weight
    best, best_weight = None, 0.0
    for coding in offered:
        weight = weights.get(coding, weights.get("*", 0.0))
        if weight > best_weight:
            best, best_weight = coding, weight
    if best is not None and weights.get("identity", 0.0) > best_weight:
        return None
    return best


class AnswerCompression:
    """Compresses an answer in the coding the request's ``Accept-Encoding`` weighs highest
    (gzip or deflate, at ``level``), with ``Content-Encoding`` and ``Vary: Accept-Encoding``.

    Left as they are: answers to HEAD, 1xx, 204, 206 and 304 answers, answers that already
    have a ``Content-Encoding``, media types that do not compress (see ``_COMPRESSIBLE``),
    and bodies shorter than ``minimum_bytes``. A streamed body (``/predict_file``'s
    ``FileResponse``) is compressed a chunk at a time as it goes, never held whole; its
    ``Content-Length`` is dropped (the server sends it chunked) and a strong ``ETag`` made
    weak, as the compressed bytes are not the file's."""

    def __init__(
        self, app: ASGIApp, *, minimum_bytes: int, level: int = 1, enabled: bool = True
    ) -> None:
        self.app = app
        self.minimum_bytes = minimum_bytes
        self.level = level
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return
        coding = chosen_coding(Headers(scope=scope).get("accept-encoding"))
        if coding is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Compressing(send, coding, self.level, self.minimum_bytes))


class _Compressing:
    """The ``send`` of one answer: holds its start until the first body part says whether
    the answer is compressed."""

    def __init__(self, send: Send, coding: str, level: int, minimum_bytes: int) -> None:
        self.send = send
        self.coding = coding
        self.level = level
        self.minimum_bytes = minimum_bytes
        self.start: Message | None = None
        self.compressor: zlib._Compress | None = None
        self.passing = False  # sent as it is

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if self.passing or kind not in ("http.response.start", "http.response.body"):
            await self.send(message)
        elif kind == "http.response.start":
            message.setdefault("headers", [])
            if _compressible(message["status"], Headers(raw=message["headers"])):
                self.start = message
            else:
                self.passing = True
                await self.send(message)
        elif self.compressor is None:  # the first body part
            await self._first(message)
        else:
            more = message.get("more_body", False)
            await self.send({**message, "body": await self._compress(message, more)})

    async def _first(self, message: Message) -> None:
        assert self.start is not None
        start, self.start = self.start, None
        body = message.get("body", b"")
        more = message.get("more_body", False)
        headers = MutableHeaders(scope=start)
        headers.add_vary_header("Accept-Encoding")
        if not more and len(body) < self.minimum_bytes:
            self.passing = True
            await self.send(start)
            await self.send(message)
            return
        self.compressor = zlib.compressobj(self.level, zlib.DEFLATED, _WINDOW_BITS[self.coding])
        compressed = await self._compress(message, more)
        headers["content-encoding"] = self.coding
        if more:
            del headers["content-length"]
        else:
            headers["content-length"] = str(len(compressed))
        etag = headers.get("etag")
        if etag and not etag.startswith("W/"):
            headers["etag"] = f"W/{etag}"
        await self.send(start)
        await self.send({**message, "body": compressed})

    async def _compress(self, message: Message, more: bool) -> bytes:
        body = message.get("body", b"")
        if len(body) >= _THREAD_BYTES:
            return await anyio.to_thread.run_sync(self._deflate, body, more)
        return self._deflate(body, more)

    def _deflate(self, body: bytes, more: bool) -> bytes:
        assert self.compressor is not None
        # A streamed part is flushed whole, so the client can read it as it comes.
        flush = zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH
        return self.compressor.compress(body) + self.compressor.flush(flush)


def _compressible(status: int, headers: Headers) -> bool:
    if status < 200 or status in (204, 206, 304) or "content-encoding" in headers:
        return False
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    return media_type.endswith("+json") or media_type.startswith(_COMPRESSIBLE)
