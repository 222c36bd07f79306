"""Score whole tables by key across one or many servers, and prove the answer complete.

    client = KeyedClient(["http://10.0.0.5:3000", "http://10.0.0.6:3000"])
    scored = client.score(frame, key="customer_id", keep=["region"])
    scored = client.score(frame, key=["region", "customer_id"])  # a key of two columns
    scored = client.score(frame, key="@row")  # no key column: rows by position ("row")

The client knows only the wire format. It cuts the input into chunks (bounded in rows and
bytes), sends them concurrently to the least-loaded server that is not cooling down,
honours 429/503 ``Retry-After``, moves work off a server that stops answering, and asks
for per-instance errors so that only the keys that really failed are reported. Every
answer is checked: the keys that come back must be the keys sent, in order, each once.
Keys must be unique across the whole input (that is what makes any split safe). A key of
several columns (or ``@row``) is sent as the row's position in the input, which maps back
exactly; the output carries every key column's own values.

No path waits forever: each request has an overall deadline (``timeout_s``), a server's
Retry-After is capped, and an unexpected error in the client itself stops the run at once
(``ScoringStopped``, with the rows scored until then).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pandas as pd

from keyed_serving.keys import Key, typed
from keyed_serving.tables import (
    ROW_KEY,
    InvalidKeys,
    check_key_columns,
    check_keys,
    check_output_columns,
    feature_column,
    key_columns,
    scored_columns,
    with_row_numbers,
)

__all__ = ["InvalidKeys", "KeyedClient", "ScoringError", "ScoringStopped", "check_keys"]
# Answers that mean "this server is busy or unwell for now": try again, maybe elsewhere.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A Retry-After longer than this is taken as this: a server's hint must not park a run.
MAX_PAUSE_S = 60.0


class ScoringError(Exception):
    """Some keys could not be scored. ``failed`` maps each to its reason; ``partial`` holds
    the rows that were scored, in input order."""

    def __init__(self, failed: dict[Any, str], partial: pd.DataFrame | list[dict[str, Any]]):
        self.failed = failed
        self.partial = partial
        shown = ", ".join(f"{k!r}: {v}" for k, v in list(failed.items())[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(f"{len(failed)} key(s) could not be scored: {shown}{more}")


class ScoringStopped(Exception):
    """The run stopped on an unexpected error in the client (a value it cannot send, a
    bug): ``cause`` says which. ``partial`` holds the rows scored before it, in input order;
    ``failed`` the keys that had failed; the other keys were not scored."""

    def __init__(
        self,
        cause: BaseException,
        failed: dict[Any, str],
        partial: pd.DataFrame | list[dict[str, Any]],
    ):
        self.cause = cause
        self.failed = failed
        self.partial = partial
        super().__init__(
            f"scoring stopped on an unexpected error in the client: {type(cause).__name__}: {cause}"
        )


@dataclass
class _Answered:
    """A chunk's checked answer: predictions (and probabilities by class) of its rows
    ``start``..``end``, in order; those of its rows that failed are in the run's ``failed``."""

    start: int
    end: int
    predictions: list[Any]
    probabilities: dict[str, list[Any]] | None


@dataclass
class _Tally:
    """What a run has settled: chunks answered, and the positions that failed (with why).
    Every position is settled once: in an answered chunk, or failed."""

    rows: int
    answered: list[_Answered]
    failed: dict[int, str]

    def positions(self) -> list[int]:
        """The positions answered with a prediction, in input order."""
        positions: list[int] = []
        for chunk in sorted(self.answered, key=lambda c: c.start):
            if self.failed:
                positions.extend(p for p in range(chunk.start, chunk.end) if p not in self.failed)
            else:
                positions.extend(range(chunk.start, chunk.end))
        return positions

    def columns(
        self, labels: Sequence[str]
    ) -> tuple[list[Any], dict[str, list[Any]] | None, list[int] | None]:
        """(predictions, probabilities by label, positions) of the answered rows, in input
        order; ``positions`` is None when every row was answered."""
        predictions: list[Any] = [None] * self.rows
        probabilities = {label: [None] * self.rows for label in labels}
        for chunk in self.answered:
            predictions[chunk.start : chunk.end] = chunk.predictions
            for label, column in (chunk.probabilities or {}).items():
                if label in probabilities:
                    probabilities[label][chunk.start : chunk.end] = column
        positions = self.positions()
        if len(positions) == self.rows:
            return predictions, probabilities or None, None
        return (
            [predictions[p] for p in positions],
            {label: [c[p] for p in positions] for label, c in probabilities.items()} or None,
            positions,
        )


class _Stopped(Exception):
    """A worker's unexpected error, with what the run had settled until then."""

    def __init__(self, cause: BaseException, tally: _Tally):
        super().__init__(str(cause))
        self.cause, self.tally = cause, tally


@dataclass
class _Server:
    url: str
    in_flight: int = 0
    not_before: float = 0.0  # cooling down until (Retry-After, or backoff after failures)
    failures: int = 0  # consecutive failures to answer at all


@dataclass
class _Chunk:
    start: int  # the rows start..end of the input (a split of a range is two ranges)
    end: int
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
        keys = check_keys([i["key"] for i in instances])
        names = dict.fromkeys(name for i in instances for name in i["features"])
        columns = {n: [i["features"].get(n) for i in instances] for n in names}
        try:
            tally = asyncio.run(self._score_columns(keys, columns))
        except _Stopped as stopped:
            reasons = {keys[p]: r for p, r in stopped.tally.failed.items()}
            raise ScoringStopped(stopped.cause, reasons, _entries(keys, stopped.tally)) from (
                stopped.cause
            )
        if tally.failed:
            reasons = {keys[p]: r for p, r in sorted(tally.failed.items())}
            raise ScoringError(reasons, _entries(keys, tally))
        return _entries(keys, tally)

    def score(
        self,
        frame: pd.DataFrame,
        key: str | Sequence[str],
        keep: Sequence[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """The frame's rows scored: the key column(s), ``prediction``, one
        ``probability_<class>`` column per class (classifiers), and the ``keep`` columns, in
        input order. ``key`` is a column, a list of columns (a key of several parts: a
        failed key is then reported as a tuple), or ``"@row"``: the rows' 0-based positions
        in ``frame``, in a first column ``row``."""
        scored, failed = asyncio.run(self.ascore(frame, key, keep, on_progress))
        if failed:
            raise ScoringError(failed, scored)
        return scored

    # ---- async core ---------------------------------------------------------------------

    async def ascore(
        self,
        frame: pd.DataFrame,
        key: str | Sequence[str],
        keep: Sequence[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[pd.DataFrame, dict[Any, str]]:
        """(scored rows in input order, reasons of the keys that failed). Raises
        ``ScoringStopped`` (with the rows scored so far) on an unexpected error."""
        names = key_columns(key)
        if key == ROW_KEY:
            frame = with_row_numbers(frame)
        absent_keys = [n for n in names if n not in frame.columns]
        if absent_keys:
            raise ValueError(f"no key column {absent_keys[0]!r} in {list(frame.columns)}")
        missing_keep = [c for c in keep if c not in frame.columns]
        if missing_keep:
            raise ValueError(f"columns to keep not in the input: {missing_keep}")
        # One key column: its keys go on the wire as they are. Several: the row's position
        # stands for the tuple on the wire, and the tuple comes back in the output.
        wire_keys: list[Key]
        if len(names) == 1:
            wire_keys = check_keys(frame[names[0]].tolist())
            labels: list[Any] = list(wire_keys)
        else:
            labels = list(check_key_columns({n: frame[n].tolist() for n in names}))
            wire_keys = list(range(len(labels)))
        info = self._info or await self._model_info()
        self._info = info
        check_output_columns(names, keep, info.get("classes"))
        features = info["features"]
        absent = [f["name"] for f in features if f["name"] not in frame.columns]
        if absent:
            raise ValueError(f"the input lacks the model's features {absent}")
        columns = {f["name"]: feature_column(frame[f["name"]], f["type"]) for f in features}
        labels_of_classes = [str(label) for label in info.get("classes") or []]

        def table(tally: _Tally) -> pd.DataFrame:
            predictions, probabilities, positions = tally.columns(labels_of_classes)
            if len(names) == 1:
                key_values = {
                    names[0]: labels if positions is None else [labels[p] for p in positions]
                }
            else:
                taken = labels if positions is None else [labels[p] for p in positions]
                parts = list(zip(*taken, strict=True)) if taken else [() for _ in names]
                key_values = {n: list(part) for n, part in zip(names, parts, strict=True)}
            kept = frame[list(keep)]
            return scored_columns(
                key_values,
                predictions,
                probabilities,
                info.get("classes"),
                kept if positions is None else kept.iloc[positions],
            )

        try:
            tally = await self._score_columns(wire_keys, columns, on_progress)
        except _Stopped as stopped:
            reasons = {labels[p]: r for p, r in sorted(stopped.tally.failed.items())}
            raise ScoringStopped(stopped.cause, reasons, table(stopped.tally)) from (stopped.cause)
        return table(tally), {labels[p]: reason for p, reason in sorted(tally.failed.items())}

    async def _model_info(self) -> dict[str, Any]:
        errors = []
        async with self._http() as http:
            for url in self.urls:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        response = await http.get(f"{url}/model_info")
                    response.raise_for_status()
                    return dict(response.json())
                except (httpx.HTTPError, TimeoutError, ValueError) as exc:
                    errors.append(f"{url}: {self._failure(exc)}")
        raise ConnectionError(f"no server answered /model_info: {errors}")

    def _failure(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):  # the deadline's own error says nothing
            return f"Timeout: no complete answer within {self.timeout_s:g} s"
        return f"{type(exc).__name__}: {exc}"

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self.headers,
            timeout=self.timeout_s,
            limits=_limits(self.concurrency),
            transport=self.transport,
            verify=_tls_context(),
        )

    async def _score_columns(
        self,
        keys: list[Key],
        columns: dict[str, list[Any]],
        on_progress: Callable[[int], None] | None = None,
    ) -> _Tally:
        """Every row scored or failed, once: the rows ``keys[i]`` with ``columns[n][i]``."""
        tally = _Tally(len(keys), [], {})
        settled: list[tuple[int, int]] = []
        servers = [_Server(url) for url in self.urls]
        queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        for start in range(0, len(keys), self.chunk_rows):
            queue.put_nowait(_Chunk(start, min(start + self.chunk_rows, len(keys))))

        def settle(chunk: _Chunk) -> None:
            settled.append((chunk.start, chunk.end))
            if on_progress is not None:
                on_progress(chunk.end - chunk.start)
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
            # Runs until cancelled; an exception ends it, and with it the run (see below).
            while True:
                chunk = await queue.get()
                server = await pick_server()
                server.in_flight += 1
                try:
                    outcome = await self._send(http, server, chunk, keys, columns, tally)
                finally:
                    server.in_flight -= 1
                if outcome == "split":
                    middle = (chunk.start + chunk.end) // 2
                    queue.put_nowait(_Chunk(chunk.start, middle, chunk.attempts))
                    queue.put_nowait(_Chunk(middle, chunk.end, chunk.attempts))
                    queue.task_done()
                elif outcome == "retry" and chunk.attempts < self.max_attempts:
                    queue.put_nowait(chunk)
                    queue.task_done()
                else:
                    if outcome == "retry":
                        reason = f"gave up after {chunk.attempts} attempts: {chunk.last_error}"
                        tally.failed.update(dict.fromkeys(range(chunk.start, chunk.end), reason))
                    settle(chunk)

        async with self._http() as http:
            workers = [asyncio.create_task(worker(http)) for _ in range(self.concurrency)]
            finished = asyncio.create_task(queue.join())
            try:
                # A worker only ever ends by raising: its chunk would never be settled and
                # queue.join() would wait forever, so the first one to end ends the run.
                await asyncio.wait([finished, *workers], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in [finished, *workers]:
                    task.cancel()
                ended = await asyncio.gather(*workers, return_exceptions=True)
            errors = [
                e
                for e in ended
                if isinstance(e, BaseException) and not isinstance(e, asyncio.CancelledError)
            ]
            if errors:
                raise _Stopped(errors[0], tally)
        # The settled chunks must tile the rows: each row settled once, none left out.
        position = 0
        for start, end in sorted(settled):
            if start != position:
                raise AssertionError(f"client bookkeeping lost or repeated rows at {position}")
            position = end
        if position != len(keys):
            raise AssertionError(f"client bookkeeping lost rows from {position}")
        return tally

    async def _send(
        self,
        http: httpx.AsyncClient,
        server: _Server,
        chunk: _Chunk,
        keys: list[Key],
        columns: dict[str, list[Any]],
        tally: _Tally,
    ) -> str:
        """'done', 'retry' or 'split'; settles a done chunk's rows in ``tally``."""
        sent = keys[chunk.start : chunk.end]
        body = _columnar_body(
            sent, {n: column[chunk.start : chunk.end] for n, column in columns.items()}
        )
        if len(body) > self.max_chunk_bytes and len(sent) > 1:
            return "split"
        chunk.attempts += 1
        try:
            # httpx's timeout bounds each read, not the whole answer: a server that trickles
            # bytes would hold the chunk for ever without this deadline.
            async with asyncio.timeout(self.timeout_s):
                response = await http.post(
                    f"{server.url}/predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            # The server did not answer: keep the work away from it for a while.
            _cool_down(server)
            chunk.last_error = f"{server.url}: {self._failure(exc)}"
            return "retry"
        server.failures = 0
        if response.status_code == 200:
            try:
                checked = _checked_answer(orjson.loads(response.content), sent, chunk.start)
            except orjson.JSONDecodeError:
                checked = None
            if checked is None:
                # Not to be believed, nor trusted with the retry: as if it had not answered.
                _cool_down(server)
                chunk.last_error = f"{server.url}: answer's keys do not match the keys sent"
                return "retry"
            answered, failed = checked
            tally.answered.append(answered)
            tally.failed.update(failed)
            return "done"
        chunk.last_error = f"{server.url}: HTTP {response.status_code}: {response.text[:300]}"
        if response.status_code in RETRY_STATUSES:
            wait = response.headers.get("retry-after", "")
            pause = min(float(wait), MAX_PAUSE_S) if wait.replace(".", "", 1).isdigit() else 0.5
            server.not_before = max(server.not_before, time.monotonic() + pause)
            return "retry"
        if response.status_code == 413 and len(sent) > 1:
            return "split"
        # The request itself was refused: final.
        tally.failed.update(dict.fromkeys(range(chunk.start, chunk.end), chunk.last_error))
        return "done"


@functools.cache
def http_transport(concurrency: int) -> httpx.AsyncHTTPTransport:
    """The transport a client's connections go through (a transport of one's own, such as
    keyed-score's, wraps it): httpx's TLS defaults, made once, and two connections per
    request in flight."""
    return httpx.AsyncHTTPTransport(verify=_tls_context(), limits=_limits(concurrency))


def _limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(max_connections=concurrency * 2)


def _tls_context() -> ssl.SSLContext:
    """httpx's own default context, made once: making one per client (keyed-score makes a
    client per batch) took a twentieth of a run's time."""
    return httpx.create_ssl_context()


def _cool_down(server: _Server) -> None:
    """Keeps work away from a server that failed, for longer each time in a row."""
    server.failures += 1
    server.not_before = time.monotonic() + min(30.0, 0.25 * 2**server.failures)


def _columnar_body(keys: list[Key], columns: dict[str, list[Any]]) -> bytes:
    """The chunk in the server's columnar format: a list per feature instead of an object
    per row, several times cheaper to write and to read."""
    body = {"keys": keys, "columns": columns, "errors": "per_instance"}
    # `in` scans a list in C; only float infinity (and its equals) compare equal to it.
    if not any(math.inf in column or -math.inf in column for column in columns.values()):
        return orjson.dumps(body)
    # orjson would write Infinity as null (a missing value); Python's JSON writes it as
    # Infinity, which the server answers as that key's out_of_range error.
    return json.dumps(body).encode()


def _checked_answer(
    answer: Any, sent: list[Key], start: int
) -> tuple[_Answered, dict[int, str]] | None:
    """A columnar answer to the keys ``sent`` (rows ``start``...), checked: (its
    predictions, the positions that failed with why); None if it is not to be believed
    (other keys, or in another order; a column of another length; an error for a key not
    sent)."""
    try:
        keys, predictions = answer["keys"], answer["predictions"]
        probabilities = answer.get("probabilities")
        errors = answer.get("errors") or []
        # One comparison of the lists, and one of their types: 1, 1.0 and True are equal
        # in Python but are different keys.
        if keys != sent or list(map(type, keys)) != list(map(type, sent)):
            return None
        if not isinstance(predictions, list) or len(predictions) != len(sent):
            return None
        if probabilities is not None and not (
            isinstance(probabilities, dict)
            and all(isinstance(c, list) and len(c) == len(sent) for c in probabilities.values())
        ):
            return None
        failed: dict[int, str] = {}
        if errors:
            index = {typed(key): row for row, key in enumerate(sent)}
            for error in errors:
                row = index.get(typed(error["key"]))
                if row is None:
                    return None
                failed[start + row] = f"{error['error']['code']}: {error['error']['message']}"
    except (KeyError, TypeError, ValueError):
        return None
    return _Answered(start, start + len(sent), predictions, probabilities), failed


def _entries(keys: list[Key], tally: _Tally) -> list[dict[str, Any]]:
    """The instances API's answer: one entry per answered row, in input order,
    {key, prediction, probabilities} (probabilities when the server gave them)."""
    entries: list[dict[str, Any]] = []
    for chunk in sorted(tally.answered, key=lambda c: c.start):
        for row in range(chunk.end - chunk.start):
            position = chunk.start + row
            if position in tally.failed:
                continue
            entry = {"key": keys[position], "prediction": chunk.predictions[row]}
            if chunk.probabilities is not None:
                entry["probabilities"] = {
                    label: column[row] for label, column in chunk.probabilities.items()
                }
            entries.append(entry)
    return entries
