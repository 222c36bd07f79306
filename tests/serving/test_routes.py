"""How the lean routes read a request's body (keyed_serving.serving.routes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keyed_serving.serving.routes import _read_body


def receiving(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def test_a_body_in_one_message_is_taken_as_it_is() -> None:
    """As the gate replays it: no copy of a 260 KB body (joining one bytes object gives it
    back as it is; this fails if that changes)."""
    data = b'{"keys": []}' * 20_000
    assert asyncio.run(_read_body(receiving(body(data)))) is data


@pytest.mark.parametrize("parts", [[b"ab", b"", b"cd"], [b"", b"abcd"], [b"abcd", b""]])
def test_a_body_in_several_messages_is_joined_in_order(parts: list[bytes]) -> None:
    messages = [body(part, more=True) for part in parts[:-1]] + [body(parts[-1])]
    assert asyncio.run(_read_body(receiving(*messages))) == b"abcd"


@pytest.mark.parametrize("after", [0, 1])
def test_a_client_gone_while_its_body_is_read_gets_nothing(after: int) -> None:
    messages = [body(b"ab", more=True)] * after + [{"type": "http.disconnect"}]
    assert asyncio.run(_read_body(receiving(*messages))) is None
