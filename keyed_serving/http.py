"""HTTP helpers of the entry: the one error body shape, and a GET alias for POST-only APIs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyed_serving.schemas import ErrorDetail, ErrorResponse


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
        headers = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"2")]
        post_scope: dict[str, Any] = {**scope, "method": "POST", "headers": headers}
        sent = False

        async def empty_json_body() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if it comes
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}

        await self.app(post_scope, empty_json_body, send)
