"""Routes the entry answers from ASGI middleware, in front of BentoML's router: the lean
routes of ``/predict`` and V2 inference, the Open Inference Protocol's GET routes, the API
page, the refined OpenAPI document and a GET alias for POST-only APIs."""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyed_serving.serving.http import error_response, replay

logger = logging.getLogger("keyed_serving")


class RefinedDocs:
    """Serves ``/docs.json`` refined for the served model (see :mod:`.openapi`)."""

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
                from keyed_serving.model.store import load_spec
                from keyed_serving.serving.openapi import refine_openapi

                refined = refine_openapi(json.loads(body), load_spec(self.model_tag))
                self._refined = json.dumps(refined).encode()
            body = self._refined
        headers = MutableHeaders(raw=list(start.get("headers", [])))
        headers["content-length"] = str(len(body))
        await send({**start, "headers": headers.raw})
        await send({"type": "http.response.body", "body": body})


class EntryHandlers(Protocol):
    async def predict_raw(self, raw: bytes) -> Response: ...

    async def labels_raw(self, raw: bytes) -> Response: ...

    async def infer_raw(
        self, name: str | None, version: str | None, raw: bytes, header_length: str | None
    ) -> Response: ...


@dataclass
class EntrySlot:
    """Where the lean routes find the entry's service instance, which BentoML makes when the
    app starts (the instance registers itself); ``enabled`` switches the routes off."""

    instance: EntryHandlers | None = None
    enabled: bool = True


LEAN_PATHS = frozenset({"/predict", "/labels"})
_V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class LeanRoutes:
    """Answers ``POST /predict``, V2 inference and ``POST /labels`` with the entry's own
    handlers, straight from here.

    BentoML sends an API call through Starlette's router, its request context middleware
    and its API wrapper (input spec, serde, response headers): measured with
    bench/profile_workers.py at W1, about a third of the entry's CPU for a one-instance request,
    more than our validation, coalescing and answer together. The APIs stay declared (the
    OpenAPI document, BentoML's client and in-process calls use them) and answer the same;
    everything outside this middleware (BentoML's metrics, timeout and concurrency
    middlewares, the gate) still applies. Not used with BentoML's CORS on, whose
    middleware sits inside this one."""

    def __init__(self, app: ASGIApp, slot: EntrySlot, cors: bool = False) -> None:
        self.app = app
        self.slot = slot
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self.slot.instance
        if (
            entry is None
            or self.cors
            or not self.slot.enabled
            or scope["type"] != "http"
            or scope["method"] != "POST"
        ):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        v2 = None if path in LEAN_PATHS else _V2_INFER.match(path)
        if path not in LEAN_PATHS and v2 is None:
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        if raw is None:
            return  # the client went away
        try:
            if path == "/labels":
                response = await entry.labels_raw(raw)
            elif v2 is None:
                response = await entry.predict_raw(raw)
            else:
                length = Headers(scope=scope).get("inference-header-content-length")
                response = await entry.infer_raw(v2[1], v2[2], raw, length)
        except Exception:
            logger.exception("answering 500: %s %s", scope["method"], path)
            response = error_response(500, "internal error; the server's log says more")
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    """The request's body, or None when the client went away. The parts are joined once;
    a body that comes in one message (as the gate replays it) is not copied, as joining a
    single bytes object gives that object (gathering into a buffer and copying it out cost
    two copies: a 10,000-row body is 160-260 KB)."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


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
        await self.app(post_scope, replay(b"{}", receive), send)


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
        if scope["type"] != "http" or not (path == "/v2" or path.startswith("/v2/")):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            if _is_infer_route(path):  # the service's APIs
                await self.app(scope, receive, send)
            else:
                await error_response(404, _no_route(path))(scope, receive, send)
            return
        from keyed_serving.serving import v2

        if path == "/v2":
            await _json(200, v2.server_metadata(self.server_version))(scope, receive, send)
            return
        if path in ("/v2/health/live", "/v2/health/ready"):
            live = path.endswith("live")
            status = await self._probe(scope, receive, "/livez" if live else "/readyz")
            body = {"live" if live else "ready": status == 200}
            await _json(status, body)(scope, receive, send)
            return
        parts = path.split("/")[3:]  # after "", "v2", "models"
        if not path.startswith("/v2/models/") or not parts:
            await error_response(404, _no_route(path))(scope, receive, send)
            return
        name, rest = parts[0], parts[1:]
        version = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        if rest == ["infer"]:  # an API of the service, on POST: its own 405
            await self.app(scope, receive, send)
            return
        if rest not in ([], ["ready"]):
            await error_response(404, _no_route(path))(scope, receive, send)
            return
        spec = self.spec()
        if name != v2.model_name(spec) or version not in (None, v2.model_version(spec)):
            await error_response(404, v2.unknown_model(spec, name, version))(scope, receive, send)
        elif rest == ["ready"]:
            status = await self._probe(scope, receive, "/readyz")
            ready = {"name": v2.model_name(spec), "ready": status == 200}
            await _json(status, ready)(scope, receive, send)
        else:
            await _json(200, v2.model_metadata(spec))(scope, receive, send)

    async def _probe(self, scope: Scope, receive: Receive, probe: str) -> int:
        """The status BentoML's own probe (``/livez``, ``/readyz``) answers; its text/plain
        body is dropped for the protocol's JSON."""
        status = 500

        async def keep_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        probe_scope = {**scope, "method": "GET", "path": probe, "raw_path": probe.encode()}
        await self.app(probe_scope, receive, keep_status)
        return status

    def spec(self) -> Any:
        if self._spec is None:
            from keyed_serving.model.store import load_spec

            self._spec = load_spec(self.model_tag)
        return self._spec


def _is_infer_route(path: str) -> bool:
    """``/v2/models/{name}/infer`` or ``/v2/models/{name}/versions/{version}/infer``."""
    parts = path.split("/")
    return (
        parts[1:3] == ["v2", "models"]
        and (len(parts) == 5 or (len(parts) == 7 and parts[4] == "versions"))
        and parts[-1] == "infer"
    )


def _no_route(path: str) -> str:
    return (
        f"no route {path}: the Open Inference Protocol routes here are GET /v2, "
        "/v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{version}][/ready] "
        "and POST /v2/models/{name}[/versions/{version}]/infer"
    )


def _json(status: int, body: Any) -> Any:
    return JSONResponse(body, status_code=status)
