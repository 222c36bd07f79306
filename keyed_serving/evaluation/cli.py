"""keyed-evaluate: captured predictions joined with their labels by key, scored per model
version and window of time.

    keyed-evaluate CAPTURE_DIR --out report.html [--json report.json] [--joined pairs.parquet]
        [--labels FILE --key COL --label COL [--time COL] [--request-id COL]]
        [--window hour|day|week] [--since ISO] [--until ISO] [--max-delay 30d]
        [--policy last|first|all] [--engine duckdb|spark] [--min-count 30] [--model NAME]

Labels come from CAPTURE_DIR/labels/ (POST /labels) and from --labels (CSV, Parquet or
JSON Lines; --key a,b for a key of several parts, as keyed-score takes it). The join
rules are in keyed_serving.evaluation.join. Exit status 0, or 2 with a one-line message
when there is nothing to evaluate or the labels cannot be read as the model's.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from keyed_serving.capture import layout
from keyed_serving.evaluation.engines import ENGINES, Engine, engine_named
from keyed_serving.evaluation.join import POLICIES, WINDOWS, Joined, Rules, evaluate
from keyed_serving.evaluation.read import (
    MICROSECONDS,
    Capture,
    LabelFile,
    Unusable,
    empty_labels,
    iso,
    open_capture,
    read_label_file,
    to_microseconds,
)

T = TypeVar("T")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def duration_us(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` or seconds -> microseconds."""
    match = _DURATION.match(text)
    if not match:
        raise Unusable(f"--max-delay {text!r}: a duration such as 30d, 12h, 90m or 3600s")
    return round(float(match[1]) * _UNIT_S[match[2]] * MICROSECONDS)


def moment_us(text: str, option: str) -> int:
    moment = layout.utc_time(text)
    if moment is None:
        raise Unusable(f"{option} {text!r}: an ISO 8601 date or date-time")
    return to_microseconds(moment)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keyed-evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture_dir", help="the capture directory (KEYED_CAPTURE_DIR)")
    p.add_argument("--out", required=True, help="the HTML report")
    p.add_argument("--json", help="report.json")
    p.add_argument("--joined", help="the joined pairs, as Parquet")
    p.add_argument("--labels", help="a label table: CSV, Parquet or JSON Lines")
    p.add_argument("--key", help="its key column; several as a,b")
    p.add_argument("--label", help="its label column")
    p.add_argument("--time", help="its column of label times (ISO 8601; without a zone, UTC)")
    p.add_argument("--request-id", help="its column of request ids (X-Request-ID)")
    p.add_argument("--window", default="day", help="hour, day (default) or week, in UTC")
    p.add_argument("--since", help="first prediction time (ISO 8601)")
    p.add_argument("--until", help="last prediction time (ISO 8601; default now)")
    p.add_argument("--max-delay", default="30d", help="how long a label may come after (30d)")
    p.add_argument("--policy", default="last", help="last (default), first or all")
    p.add_argument("--engine", default="duckdb", help="duckdb (default) or spark")
    p.add_argument(
        "--min-count", type=int, default=30, help="pairs below which a metric is too few"
    )
    p.add_argument("--model", help="the model, when the capture holds several")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except Unusable as exc:
        print(f"keyed-evaluate: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    for option, value, allowed in (
        ("--engine", args.engine, ENGINES),
        ("--window", args.window, tuple(WINDOWS)),
        ("--policy", args.policy, POLICIES),
    ):
        if value not in allowed:
            raise Unusable(f"{option} {value!r}: one of {', '.join(allowed)}")
    if args.min_count < 1:
        raise Unusable(f"--min-count {args.min_count}: at least 1")
    named = [o for o in ("key", "label", "time", "request_id") if getattr(args, o)]
    if args.labels and not {"key", "label"} <= set(named):
        raise Unusable("--labels needs --key and --label (the columns of the key and the label)")
    if named and not args.labels:
        raise Unusable(
            f"--{named[0].replace('_', '-')} names a column of --labels, which is not given"
        )
    until = (
        moment_us(args.until, "--until")
        if args.until
        else to_microseconds(datetime.datetime.now(datetime.UTC))
    )
    rules = Rules(
        until_us=until,
        since_us=moment_us(args.since, "--since") if args.since else None,
        policy=args.policy,
        max_delay_us=duration_us(args.max_delay),
        window=args.window,
    )
    for option, path in (("--out", args.out), ("--json", args.json), ("--joined", args.joined)):
        # Said now, not as a traceback once the join is done.
        if path and not Path(path).parent.is_dir():
            raise Unusable(f"{option} {path}: no directory {Path(path).parent}")
    if rules.since_us is not None and rules.since_us > rules.until_us:
        raise Unusable(f"--since {args.since} is after --until {iso(rules.until_us)}")
    if not Path(args.capture_dir).is_dir():
        raise Unusable(f"{args.capture_dir}: no such directory (the server's KEYED_CAPTURE_DIR)")
    capture = read_again(lambda: open_capture(args.capture_dir, args.model), args.capture_dir)
    if args.labels:
        if not Path(args.labels).is_file():
            raise Unusable(f"--labels {args.labels}: no such file")
        spec = LabelFile(Path(args.labels), args.key, args.label, args.time, args.request_id)
        file_labels = read_label_file(spec, capture.task)
    else:
        file_labels = empty_labels(capture.task)
    engine = engine_named(args.engine)
    try:
        joined = read_again(lambda: evaluate(engine, capture, file_labels, rules), args.capture_dir)
        note = key_type_note(engine) if joined.diagnostics["orphan_labels"] else None
    finally:
        engine.close()
    if note:
        print(f"keyed-evaluate: {note}", file=sys.stderr)
    if joined.windows.empty:
        raise Unusable(
            f"{args.capture_dir} holds no predictions of {capture.model!r} in the time asked"
        )
    # scikit-learn loads here, not for --help or a refusal before the join.
    from keyed_serving.evaluation import report as reporting

    built = reporting.build(capture, rules, joined, engine=args.engine, min_count=args.min_count)
    show(built)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(built, option=orjson.OPT_INDENT_2))
    if args.joined:
        write_joined(Path(args.joined), capture, joined)
    from keyed_serving.evaluation.html import render  # matplotlib: only when drawing

    Path(args.out).write_text(render(built), encoding="utf-8")
    return 0


# A capture being written: a worker's merge removes its small files once the merged file
# holding their rows is renamed in, so a file listed may be gone when it is opened. No row
# is lost by reading again (keyed_serving.capture.writer); each engine says it its way.
READ_ATTEMPTS = 5
_VANISHED = ("No such file or directory", "FileNotFoundException", "FILE_NOT_EXIST")


def read_again(read: Callable[[], T], capture_dir: str) -> T:
    """``read()``, again when a file of the capture vanished while it was read."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return read()
        except Unusable:
            raise
        except Exception as exc:
            if not (isinstance(exc, FileNotFoundError) or any(t in str(exc) for t in _VANISHED)):
                raise
            if attempt == READ_ATTEMPTS:
                raise Unusable(
                    f"{capture_dir}: its files were merged away {READ_ATTEMPTS} times while "
                    f"read ({type(exc).__name__}); try again"
                ) from None
    raise AssertionError("unreachable")


def key_type_note(engine: Engine) -> str | None:
    """Why orphan labels met nothing when their key was predicted with another type (the
    keys of a CSV are text; a JSON body's 17 is an integer): the rule stands, and the
    terminal says so. None when no orphan label is of that kind."""
    found = engine.frame(
        """
        SELECT COUNT(*) AS n, MIN(key) AS key, MIN(key_type) AS label_type,
               MIN(other_type) AS predicted_type
        FROM (SELECT l.key, l.key_type, l.request_id, MIN(o.key_type) AS other_type
              FROM labels AS l
              JOIN (SELECT DISTINCT key, key_type FROM predictions) AS o
                ON l.key = o.key AND l.key_type <> o.key_type
              LEFT JOIN (SELECT DISTINCT key, key_type FROM predictions) AS s
                ON l.key = s.key AND l.key_type = s.key_type
              WHERE s.key IS NULL
              GROUP BY l.key, l.key_type, l.request_id) AS other_typed
        """
    ).iloc[0]
    if not found["n"]:
        return None
    return (
        f"{int(found['n'])} orphan label(s) have a key predicted only as another type, "
        f"e.g. {found['key']!r} ({found['label_type']}) was predicted as "
        f"({found['predicted_type']}): "
        'keys compare with their type (1 and "1" differ); give the label file\'s key column '
        "the type the server was sent (a CSV's keys are text; Parquet and JSON Lines keep "
        "integers)"
    )


def write_joined(path: Path, capture: Capture, joined: Joined) -> None:
    """The joined pairs as Parquet: the prediction's columns as captured, then the label's."""
    pairs = joined.pairs

    def times(column: str) -> pa.Array:
        micros = pa.array(pairs[column], pa.int64(), from_pandas=True)  # a gap: null
        return micros.cast(pa.timestamp("us", tz="UTC"))

    kind = pa.string() if capture.task == "classification" else pa.float64()
    columns: dict[str, pa.Array] = {
        "version": pa.array(pairs["version"].astype(str).tolist(), pa.string()),
        layout.REQUEST_ID: pa.array(pairs["request_id"].tolist(), pa.string()),
        layout.KEY: pa.array(pairs["key"].tolist(), pa.string()),
        layout.KEY_TYPE: pa.array(pairs["key_type"].tolist(), pa.string()),
        layout.TS: times("ts_us"),
        "window": times("window_us"),
        layout.PREDICTION: pa.array(pairs["prediction"], kind, from_pandas=True),
    }
    for i, name in enumerate(capture.classes or []):
        columns[layout.PROBABILITY_PREFIX + name] = pa.array(
            pairs[f"p{i}"], pa.float64(), from_pandas=True
        )
    columns[layout.ERROR] = pa.array(pairs["error"], pa.string(), from_pandas=True)
    columns["label"] = pa.array(pairs["label"], kind, from_pandas=True)
    columns["label_time"] = times("label_time_us")
    columns["label_received"] = times("label_received_us")
    columns["label_request_id"] = pa.array(pairs["label_request_id"], pa.string(), from_pandas=True)
    pq.write_table(pa.table(columns), path)


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _delay(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g} {unit}"
    return f"{seconds:g} s"


def show(built: dict[str, Any]) -> None:
    """A table per version in the terminal, then the diagnostics."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    rules = built["rules"]
    console.print(
        f"[bold]{built['model']}[/] ({built['task']}): the {rules['policy']} prediction before "
        f"each label, within {_delay(rules['max_delay_s'])}; predictions until {rules['until']}; "
        f"on {built['engine']}"
    )
    for version, entry in built["versions"].items():
        console.print(
            f"\n[bold]version {version}[/]: {entry['predictions']} predictions, "
            f"{entry['failed']} failed, {entry['labelled']} labelled, coverage "
            f"{_number(entry['coverage'], 3)} ({entry['first']} .. {entry['last']})"
        )
        table = Table()
        for column in ("metric", "value", "interval", "n"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, metric in entry["metrics"].items():
            if name == "confusion_matrix":
                continue
            interval = (
                "too few"
                if metric["too_few"]
                else f"{_number(metric['low'])} .. {_number(metric['high'])}"
            )
            table.add_row(name, _number(metric["value"]), interval, str(metric["n"]))
        console.print(table)
    console.print("\n[bold]diagnostics[/]")
    diagnostics = Table()
    diagnostics.add_column("count")
    diagnostics.add_column("n", justify="right")
    for name, value in built["diagnostics"].items():
        diagnostics.add_row(name, str(value))
    console.print(diagnostics)


if __name__ == "__main__":
    raise SystemExit(main())
