"""HTTP helpers of the entry: the one error body shape, the gate every request passes, and
a GET alias for POST-only APIs."""

from __future__ import annotations

import contextvars
import hmac
import html
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyed_serving.schemas import ErrorDetail, ErrorResponse

# Probes and scrapers must work without a token and must never be refused for load.
OPEN_PATHS = frozenset(
    {"/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
# The Open Inference Protocol's binary extension sends bytes after a JSON header, and
# tritonclient names no content type at all.
BINARY_MEDIA_TYPES = frozenset({"application/json", "application/octet-stream", ""})
OVERLOAD_STATUSES = frozenset({429, 503, 504})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def error_response(
    status: int,
    summary: str,
    details: Iterable[ErrorDetail] = (),
    headers: Mapping[str, str] | None = None,
) -> Any:
    """The same shape as BentoML's own 400 for schema errors: ``{"error", "detail": [...]}``.

    Typed ``Any`` because APIs return it in place of their declared model: BentoML sends a
    starlette ``Response`` returned by an API as it is.
    """
    body = ErrorResponse(error=summary, detail=list(details))
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


class RequestIdFilter(logging.Filter):
    """Appends the current request's id to this project's log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current != "-" and "request_id=" not in str(record.msg):
            record.msg = f"{record.msg} [request_id={current}]"
        return True


class EntryGate:
    """Every request to the entry passes here first.

    - gives it a request id (the caller's ``X-Request-ID`` if sane), sent back on the answer
      and added to this project's log lines;
    - with a token configured, asks for ``Authorization: Bearer <token>`` (401 otherwise,
      compared in constant time), except on the probe and metrics paths;
    - refuses bodies that are not JSON (415) or larger than ``max_body_bytes`` (413);
    - answers 429 when ``max_concurrency`` requests are already in flight on this worker;
    - makes sure every 429/503/504 carries ``Retry-After``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_token: str | None,
        max_body_bytes: int,
        max_concurrency: int,
        retry_after_s: int,
        file_paths: Iterable[str] = (),
        max_file_bytes: int = 0,
    ) -> None:
        self.app = app
        self.token = f"Bearer {api_token}".encode() if api_token else None
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.retry_after = str(retry_after_s)
        self.in_flight = 0
        self.file_paths = frozenset(file_paths)
        self.max_file_bytes = max_file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        try:
            await self._gate(scope, headers, receive, self._stamped(send, rid))
        finally:
            request_id.reset(token)

    def _stamped(self, send: Send, rid: str) -> Send:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["x-request-id"] = rid
                if message["status"] in OVERLOAD_STATUSES and "retry-after" not in response_headers:
                    response_headers["retry-after"] = self.retry_after
            await send(message)

        return stamped

    async def _gate(self, scope: Scope, headers: Headers, receive: Receive, send: Send) -> None:
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.token is not None:
            offered = headers.get("authorization", "").encode()
            if not hmac.compare_digest(offered, self.token):
                await _refuse(
                    scope,
                    receive,
                    send,
                    401,
                    "missing or wrong bearer token",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
        if self.in_flight >= self.max_concurrency:
            await _refuse(
                scope,
                receive,
                send,
                429,
                f"more than {self.max_concurrency} requests in flight; retry later",
                {"Retry-After": self.retry_after},
            )
            return
        self.in_flight += 1
        try:
            await self._admit(scope, headers, receive, send)
        finally:
            self.in_flight -= 1

    async def _admit(self, scope: Scope, headers: Headers, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.file_paths:
            await self._admit_upload(scope, headers, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(scope, receive, send, 413, self._too_large())
            return
        # Judged on the headers, before a byte of the body is read.
        declares_body = "transfer-encoding" in headers or declared not in (None, "0")
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        accepted = BINARY_MEDIA_TYPES if _is_v2_infer(scope["path"]) else {"application/json"}
        if declares_body and media_type not in accepted:
            shown = media_type or "none"
            await _refuse(
                scope,
                receive,
                send,
                415,
                f"content type {shown!r} is not accepted; send application/json",
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _refuse(scope, receive, send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _admit_upload(
        self, scope: Scope, headers: Headers, receive: Receive, send: Send
    ) -> None:
        # Uploads pass through unbuffered (the server spools them to disk); their declared
        # length is the bound, which the HTTP framing then holds the client to.
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "multipart/form-data":
            await _refuse(scope, receive, send, 415, "send the file as multipart/form-data")
            return
        declared = headers.get("content-length", "")
        if not declared.isdigit():
            await _refuse(scope, receive, send, 411, "uploads need a Content-Length")
            return
        if int(declared) > self.max_file_bytes:
            await _refuse(
                scope, receive, send, 413, f"file larger than {self.max_file_bytes} bytes"
            )
            return
        await self.app(scope, receive, send)

    def _too_large(self) -> str:
        return (
            f"request body larger than {self.max_body_bytes} bytes; "
            "split the instances over several requests"
        )


def _is_v2_infer(path: str) -> bool:
    return path.startswith("/v2/models/") and path.endswith("/infer")


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # the client's disconnect, if it comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    summary: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await error_response(status, summary, headers=headers)(scope, receive, send)


class RefinedDocs:
    """Serves ``/docs.json`` refined for the served model (see ``keyed_serving.openapi``)."""

    def __init__(self, app: ASGIApp, model_tag: str, path: str = "/docs.json") -> None:
        self.app = app
        self.model_tag = model_tag
        self.path = path
        self._refined: bytes | None = None  # the document does not change while serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            if self._refined is None:
                from keyed_serving.model import ModelSpec
                from keyed_serving.openapi import refine_openapi

                refined = refine_openapi(json.loads(body), ModelSpec.load(self.model_tag))
                self._refined = json.dumps(refined).encode()
            body = self._refined
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        headers["content-length"] = str(len(body))
        await send({**start, "headers": headers.raw})
        await send({"type": "http.response.body", "body": body})


class ApiPage:
    """The API page at ``/``: BentoML's Swagger UI page under this service's title (its
    text comes from the refined document's ``info``), without BentoML's tag manager, which
    would report every visit of a self-hosted server's page to a third party; and the
    user's guide it links to at ``/readme``."""

    def __init__(self, app: ASGIApp, title: str, readme: str) -> None:
        self.app = app
        self.title = title
        self.readme = readme
        self._page: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["path"] not in ("/", "/readme")
        ):
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/readme":
            from pathlib import Path

            from starlette.responses import PlainTextResponse

            text = (
                Path(self.readme).read_text(encoding="utf-8") if Path(self.readme).exists() else ""
            )
            response = PlainTextResponse(text or "no README here", status_code=200 if text else 404)
            await response(scope, receive, send)
            return
        if self._page is None:
            self._page = _retitled(_bentoml_page(), self.title)
        await Response(self._page, media_type="text/html")(scope, receive, send)


_SHOW_TITLE = (
    '<style id="keyed-title">.info .main .title {visibility: visible}'
    " .info .main .title span {position: relative; margin-left: 0.5em}</style>"
)


def _bentoml_page() -> str:
    import _bentoml_impl.server

    return (Path(_bentoml_impl.server.__file__).parent / "main-openapi.html").read_text("utf-8")


def _retitled(page: str, title: str) -> bytes:
    """BentoML's page, titled ``title``, without its Google Tag Manager blocks. A test
    fails loudly when BentoML's page changes so that an edit no longer applies."""
    page = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)}</title>", page, count=1)
    tag_manager = r"<!-- Google Tag Manager.*?<!-- End Google Tag Manager[^>]*-->"
    page = re.sub(tag_manager, "", page, flags=re.S)
    # BentoML's stylesheet hides the document's title and shows only its version.
    page = page.replace("</head>", f"{_SHOW_TITLE}</head>", 1)
    return page.encode("utf-8")


class GetAlias:
    """Answers ``GET path`` as ``POST path`` with an empty JSON body.

    BentoML routes APIs on POST only; read-only APIs such as ``/model_info`` are also
    expected on GET by people and probes.
    """

    def __init__(self, app: ASGIApp, paths: Iterable[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        replaced = (b"content-type", b"content-length")
        headers = [(k, v) for k, v in scope["headers"] if k not in replaced]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"2")]
        post_scope: dict[str, Any] = {**scope, "method": "POST", "headers": headers}
        await self.app(post_scope, _replay(b"{}", receive), send)


def bind_apis_once(instance: Any, *names: str) -> None:
    """Binds a service instance's APIs once, as BentoML would on every request.

    BentoML's server looks an API up on the instance for every call, and its descriptor
    builds a fresh wrapper each time with ``inspect.signature`` (measured: a tenth of the
    entry's CPU at one instance per request). An instance attribute takes precedence over
    that (non-data) descriptor, so the wrapper built here is the one every call gets.
    """
    for name in names:
        descriptor = getattr(type(instance), name)
        instance.__dict__[name] = descriptor.__get__(instance, type(instance))


class OpenInferenceRoutes:
    """The Open Inference Protocol's GET routes (BentoML routes APIs on POST only):

    - ``/v2``: server metadata; ``/v2/health/live`` and ``/v2/health/ready``: BentoML's
      ``/livez`` and ``/readyz`` under the protocol's names;
    - ``/v2/models/{name}`` and ``/v2/models/{name}/versions/{version}``: model metadata;
      ``.../ready``: ``/readyz`` for the served model; another name or version is a 404.

    Inference (POST ``.../infer``) is an API of the service."""

    def __init__(self, app: ASGIApp, model_tag: str, server_version: str) -> None:
        self.app = app
        self.model_tag = model_tag
        self.server_version = server_version
        self._spec: Any = None  # loaded on first use: metadata only, from the model store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/") if scope["type"] == "http" else ""
        if scope["type"] != "http" or scope["method"] != "GET" or not path.startswith("/v2"):
            await self.app(scope, receive, send)
            return
        from keyed_serving import v2

        if path == "/v2":
            await _json(200, v2.server_metadata(self.server_version))(scope, receive, send)
            return
        if path in ("/v2/health/live", "/v2/health/ready"):
            probe = "/livez" if path.endswith("live") else "/readyz"
            await self.app({**scope, "path": probe, "raw_path": probe.encode()}, receive, send)
            return
        parts = path.split("/")[3:]  # after "", "v2", "models"
        if not path.startswith("/v2/models/") or not parts:
            await self.app(scope, receive, send)
            return
        name, rest = parts[0], parts[1:]
        version = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        if rest not in ([], ["ready"]):
            await self.app(scope, receive, send)
            return
        spec = self.spec()
        if name != v2.model_name(spec) or version not in (None, v2.model_version(spec)):
            await error_response(404, v2.unknown_model(spec, name, version))(scope, receive, send)
        elif rest == ["ready"]:
            await self.app({**scope, "path": "/readyz", "raw_path": b"/readyz"}, receive, send)
        else:
            await _json(200, v2.model_metadata(spec))(scope, receive, send)

    def spec(self) -> Any:
        if self._spec is None:
            from keyed_serving.model import ModelSpec

            self._spec = ModelSpec.load(self.model_tag)
        return self._spec


def _json(status: int, body: Any) -> Any:
    return JSONResponse(body, status_code=status)
