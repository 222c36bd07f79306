"""Score whole tables by key across one or many servers, and prove the answer complete.

    client = KeyedClient(["http://10.0.0.5:3000", "http://10.0.0.6:3000"])
    scored = client.score(frame, key="customer_id", keep=["region"])

The client knows only the wire format. It cuts the input into chunks (bounded in rows and
bytes), sends them concurrently to the least-loaded server that is not cooling down,
honours 429/503 ``Retry-After``, moves work off a server that stops answering, and asks
for per-instance errors so that only the keys that really failed are reported. Every
answer is checked: the keys that come back must be the keys sent, in order, each once.
Keys must be unique across the whole input (that is what makes any split safe).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pandas as pd

from keyed_serving.tables import (
    InvalidKeys,
    check_keys,
    json_value,
    number_or_as_is,
    scored_table,
)

Key = str | int
__all__ = ["InvalidKeys", "KeyedClient", "ScoringError", "check_keys"]
# Answers that mean "this server is busy or unwell for now": try again, maybe elsewhere.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ScoringError(Exception):
    """Some keys could not be scored. ``failed`` maps each to its reason; ``partial`` holds
    the rows that were scored, in input order."""

    def __init__(self, failed: dict[Key, str], partial: pd.DataFrame | list[dict[str, Any]]):
        self.failed = failed
        self.partial = partial
        shown = ", ".join(f"{k!r}: {v}" for k, v in list(failed.items())[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(f"{len(failed)} key(s) could not be scored: {shown}{more}")


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    not_before: float = 0.0  # cooling down until (Retry-After, or backoff after failures)
    failures: int = 0  # consecutive failures to answer at all


@dataclass
class _Chunk:
    positions: list[int]
    attempts: int = 0
    last_error: str = ""


class KeyedClient:
    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        token: str | None = None,
        chunk_rows: int = 5000,
        max_chunk_bytes: int = 4 * 1024 * 1024,
        concurrency: int = 8,
        max_attempts: int = 8,
        timeout_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one server URL")
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.chunk_rows = chunk_rows
        self.max_chunk_bytes = max_chunk_bytes
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.transport = transport
        self._info: dict[str, Any] | None = None

    # ---- public, synchronous ----------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = asyncio.run(self._model_info())
        return self._info

    def predict(self, instances: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Entries for ``[{"key", "features"}, ...]``, in input order; raises
        ``ScoringError`` (with the scored entries as ``partial``) if some keys failed."""
        check_keys([i["key"] for i in instances])
        answered, failed = asyncio.run(self._score_instances(list(instances)))
        entries = [answered[p] for p in range(len(instances)) if p in answered]
        if failed:
            raise ScoringError({instances[p]["key"]: r for p, r in failed.items()}, entries)
        return entries

    def score(
        self,
        frame: pd.DataFrame,
        key: str,
        keep: Sequence[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """The frame's rows scored: the key column, ``prediction``, one ``probability_<class>``
        column per class (classifiers), and the ``keep`` columns, in input order."""
        scored, failed = asyncio.run(self.ascore(frame, key, keep, on_progress))
        if failed:
            raise ScoringError(failed, scored)
        return scored

    # ---- async core ---------------------------------------------------------------------

    async def ascore(
        self,
        frame: pd.DataFrame,
        key: str,
        keep: Sequence[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[pd.DataFrame, dict[Key, str]]:
        """(scored rows in input order, reasons of the keys that failed)."""
        if key not in frame.columns:
            raise ValueError(f"no key column {key!r} in {list(frame.columns)}")
        missing_keep = [c for c in keep if c not in frame.columns]
        if missing_keep:
            raise ValueError(f"columns to keep not in the input: {missing_keep}")
        keys = check_keys(frame[key].tolist())
        info = self._info or await self._model_info()
        self._info = info
        names = [f["name"] for f in info["features"]]
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise ValueError(f"the input lacks the model's features {absent}")
        columns = {n: frame[n].tolist() for n in names}
        convert = {
            f["name"]: number_or_as_is if f["type"] == "number" else json_value
            for f in info["features"]
        }
        instances = [
            {"key": k, "features": {n: convert[n](columns[n][row]) for n in names}}
            for row, k in enumerate(keys)
        ]
        answered, failed = await self._score_instances(instances, on_progress)
        positions = sorted(answered)
        table = scored_table(
            [keys[p] for p in positions],
            [answered[p] for p in positions],
            key,
            info.get("classes"),
            frame[list(keep)].iloc[positions],
        )
        return table, {keys[p]: reason for p, reason in sorted(failed.items())}

    async def _model_info(self) -> dict[str, Any]:
        errors = []
        async with self._http() as http:
            for url in self.urls:
                try:
                    response = await http.get(f"{url}/model_info")
                    response.raise_for_status()
                    return dict(response.json())
                except httpx.HTTPError as exc:
                    errors.append(f"{url}: {exc}")
        raise ConnectionError(f"no server answered /model_info: {errors}")

    def _http(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        return httpx.AsyncClient(
            headers=self.headers, timeout=self.timeout_s, limits=limits, transport=self.transport
        )

    def _cut(self, instances: list[dict[str, Any]]) -> list[_Chunk]:
        chunks = []
        for start in range(0, len(instances), self.chunk_rows):
            chunks.append(_Chunk(list(range(start, min(start + self.chunk_rows, len(instances))))))
        return chunks

    async def _score_instances(
        self,
        instances: list[dict[str, Any]],
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
        answered: dict[int, dict[str, Any]] = {}
        failed: dict[int, str] = {}
        servers = [_Server(url) for url in self.urls]
        queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        for chunk in self._cut(instances):
            queue.put_nowait(chunk)

        def settle(chunk: _Chunk) -> None:
            if on_progress is not None:
                on_progress(len(chunk.positions))
            queue.task_done()

        async def pick_server() -> _Server:
            while True:
                now = time.monotonic()
                ready = [s for s in servers if s.not_before <= now]
                if ready:
                    fewest = min(s.in_flight for s in ready)
                    return random.choice([s for s in ready if s.in_flight == fewest])
                await asyncio.sleep(min(s.not_before for s in servers) - now)

        async def worker(http: httpx.AsyncClient) -> None:
            while True:
                chunk = await queue.get()
                server = await pick_server()
                server.in_flight += 1
                try:
                    outcome = await self._send(http, server, chunk, instances, answered, failed)
                finally:
                    server.in_flight -= 1
                if outcome == "split":
                    middle = len(chunk.positions) // 2
                    for half in (chunk.positions[:middle], chunk.positions[middle:]):
                        queue.put_nowait(_Chunk(half, chunk.attempts))
                    queue.task_done()
                elif outcome == "retry" and chunk.attempts < self.max_attempts:
                    queue.put_nowait(chunk)
                    queue.task_done()
                else:
                    if outcome == "retry":
                        for position in chunk.positions:
                            failed[position] = f"gave up after {chunk.attempts} attempts: " + (
                                chunk.last_error
                            )
                    settle(chunk)

        async with self._http() as http:
            workers = [asyncio.create_task(worker(http)) for _ in range(self.concurrency)]
            try:
                await queue.join()
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        unaccounted = set(range(len(instances))) - answered.keys() - failed.keys()
        if unaccounted or answered.keys() & failed.keys():
            raise AssertionError(f"client bookkeeping lost rows {sorted(unaccounted)[:10]}")
        return answered, failed

    async def _send(
        self,
        http: httpx.AsyncClient,
        server: _Server,
        chunk: _Chunk,
        instances: list[dict[str, Any]],
        answered: dict[int, dict[str, Any]],
        failed: dict[int, str],
    ) -> str:
        """'done', 'retry' or 'split'; fills ``answered`` and ``failed`` for a done chunk."""
        sent = [instances[p] for p in chunk.positions]
        body = _columnar_body(sent)
        if len(body) > self.max_chunk_bytes and len(sent) > 1:
            return "split"
        chunk.attempts += 1
        try:
            response = await http.post(
                f"{server.url}/predict",
                content=body,
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            # The server did not answer: keep the work away from it for a while.
            _cool_down(server)
            chunk.last_error = f"{server.url}: {type(exc).__name__}: {exc}"
            return "retry"
        server.failures = 0
        if response.status_code == 200:
            entries = _entries(orjson.loads(response.content))
            if entries is None or [e["key"] for e in entries] != [i["key"] for i in sent]:
                # Not to be believed, nor trusted with the retry: as if it had not answered.
                _cool_down(server)
                chunk.last_error = f"{server.url}: answer's keys do not match the keys sent"
                return "retry"
            for position, entry in zip(chunk.positions, entries, strict=True):
                if "error" in entry:
                    failed[position] = f"{entry['error']['code']}: {entry['error']['message']}"
                else:
                    answered[position] = entry
            return "done"
        chunk.last_error = f"{server.url}: HTTP {response.status_code}: {response.text[:300]}"
        if response.status_code in RETRY_STATUSES:
            wait = response.headers.get("retry-after", "")
            pause = float(wait) if wait.replace(".", "", 1).isdigit() else 0.5
            server.not_before = max(server.not_before, time.monotonic() + pause)
            return "retry"
        if response.status_code == 413 and len(sent) > 1:
            return "split"
        for position in chunk.positions:  # the request itself was refused: final
            failed[position] = chunk.last_error
        return "done"


def _cool_down(server: _Server) -> None:
    """Keeps work away from a server that failed, for longer each time in a row."""
    server.failures += 1
    server.not_before = time.monotonic() + min(30.0, 0.25 * 2**server.failures)


def _columnar_body(instances: list[dict[str, Any]]) -> bytes:
    """The chunk in the server's columnar format: a list per feature instead of an object
    per row, several times cheaper to write and to read."""
    names = list(instances[0]["features"]) if instances else []
    columns = {n: [i["features"].get(n) for i in instances] for n in names}
    body = {"keys": [i["key"] for i in instances], "columns": columns, "errors": "per_instance"}
    finite = all(
        not isinstance(v, float) or math.isfinite(v) for column in columns.values() for v in column
    )
    if finite:
        return orjson.dumps(body)
    # orjson would write Infinity as null (a missing value); Python's JSON writes it as
    # Infinity, which the server answers as that key's out_of_range error.
    return json.dumps(body).encode()


def _entries(answer: Any) -> list[dict[str, Any]] | None:
    """A columnar answer as one entry per key: {key, prediction, probabilities} or
    {key, error}."""
    try:
        keys, predictions = answer["keys"], answer["predictions"]
        probabilities = answer.get("probabilities")
        errors = {_typed(e["key"]): e["error"] for e in answer.get("errors", [])}
    except (KeyError, TypeError):
        return None
    if len(keys) != len(predictions):
        return None
    entries: list[dict[str, Any]] = []
    for row, (key, prediction) in enumerate(zip(keys, predictions, strict=True)):
        error = errors.get(_typed(key))
        if error is not None:
            entries.append({"key": key, "error": error})
        elif probabilities is not None:
            entries.append(
                {
                    "key": key,
                    "prediction": prediction,
                    "probabilities": {
                        label: column[row] for label, column in probabilities.items()
                    },
                }
            )
        else:
            entries.append({"key": key, "prediction": prediction})
    return entries


def _typed(key: Any) -> tuple[type, Any]:
    return (type(key), key)
