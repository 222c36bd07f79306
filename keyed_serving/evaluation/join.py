"""The join of captured predictions and their labels: the rules, written once as SQL that
DuckDB and Spark both run (:mod:`.engines` gives the sources and the few spellings that
differ: microseconds of a timestamp, an exact quantile, quoting).

The rules (the README quotes them):

- Predictions are those of ``[since, until]`` (by ``ts``), deduplicated by
  ``(request_id, key, key_type)``: a retried request keeps its latest ``ts``.
- Labels come from ``<capture>/labels/`` (those posted to this model or to none) and from
  a label file. Keys compare with their type: ``1`` and ``"1"`` are different keys.
- Labels are grouped by ``(key, key_type, request_id)`` (no request_id: one group per key).
  In a group the latest wins: latest ``time``, then latest ``received`` (a label without
  one loses to one with), then file order (the label file after ``labels/``, a later row
  after an earlier). A group's extra labels equal to another of its labels are counted
  ``duplicate_labels``; a group whose labels disagree is counted once in
  ``conflicting_labels``.
- A label with a ``request_id`` joins exactly the prediction ``(request_id, key,
  key_type)``, or is an orphan.
- Otherwise, as of its time: the predictions of that key with ``ts <= time`` (no time:
  all of them) and ``ts >= time - max_delay`` (no time: ``ts >= until - max_delay``);
  policy ``last`` joins the latest of them, ``first`` the earliest, ``all`` every one
  (predictions at the same ``ts``: by request_id). None: an orphan label.
- A joined prediction that failed is counted (``labelled_failed``), not scored; each pair
  is scored against the version that made its prediction.

Windows are of prediction time, in UTC: hours, days, or ISO weeks (from Monday).
Everything that grows with the capture store stays in the engine; what comes back is the
joined pairs, per-(version, window) aggregates and the diagnostics' counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from keyed_serving.evaluation.engines import LABEL_COLUMNS, Engine
from keyed_serving.evaluation.read import MICROSECONDS, Capture

HOUR = 3600 * MICROSECONDS
WINDOWS = {"hour": HOUR, "day": 24 * HOUR, "week": 7 * 24 * HOUR}
# 1970-01-01 was a Thursday: weeks start four days later, on a Monday.
WINDOW_OFFSET = {"hour": 0, "day": 0, "week": 4 * 24 * HOUR}
POLICIES = ("last", "first", "all")
QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


@dataclass(frozen=True)
class Rules:
    until_us: int
    since_us: int | None = None
    policy: str = "last"
    max_delay_us: int = 30 * 24 * HOUR
    window: str = "day"


@dataclass
class Joined:
    """What the engine gives back (times as microseconds since the epoch):

    - ``pairs``: one row per (label, prediction) joined: ``version, window_us,
      request_id, key, key_type, ts_us, prediction, error, p0..pN, label, label_time_us,
      label_received_us, label_request_id``;
    - ``windows``: per (version, window_us): ``predictions, failed, first_us, last_us``, and
      ``mean_p<i>`` (classifiers) or ``mean, std, p10, p50, p90`` (regressors) over the
      predictions that did not fail;
    - ``shares``: per (version, window_us, prediction): ``n``, predictions that did not fail;
    - ``diagnostics``: the counts by name (``labels`` = label rows read, before grouping).
    """

    pairs: pd.DataFrame
    windows: pd.DataFrame
    shares: pd.DataFrame
    diagnostics: dict[str, int]


def evaluate(engine: Engine, capture: Capture, file_labels: pd.DataFrame, rules: Rules) -> Joined:
    if rules.policy not in POLICIES:
        raise ValueError(f"unknown policy {rules.policy!r}: one of {', '.join(POLICIES)}")
    if rules.window not in WINDOWS:
        raise ValueError(f"unknown window {rules.window!r}: one of {', '.join(WINDOWS)}")
    classification = capture.task == "classification"
    label_type = "STRING" if classification else "DOUBLE"
    engine.read_sources(capture, label_type)
    probabilities = [f"p{i}" for i in range(len(capture.classes or []))]
    labels = file_labels.assign(
        received_us=pd.array([None] * len(file_labels), dtype="Int64"),
        source=1,
        file_name="",
        file_row=range(len(file_labels)),
    )
    engine.register("file_labels_read", labels[LABEL_COLUMNS.split(", ")])
    engine.view(
        "file_labels",
        "SELECT CAST(key AS STRING) AS key, CAST(key_type AS STRING) AS key_type, "
        f"CAST(label AS {label_type}) AS label, CAST(time_us AS BIGINT) AS time_us, "
        "CAST(received_us AS BIGINT) AS received_us, "
        "CAST(request_id AS STRING) AS request_id, CAST(source AS BIGINT) AS source, "
        "CAST(file_name AS STRING) AS file_name, CAST(file_row AS BIGINT) AS file_row "
        "FROM file_labels_read",
    )

    since = rules.since_us if rules.since_us is not None else -(2**62)
    width, offset = WINDOWS[rules.window], WINDOW_OFFSET[rules.window]
    p_columns = "".join(f", {p}" for p in probabilities)
    engine.keep(
        "predictions",
        f"""
        SELECT request_id, key, key_type, ts_us, version, prediction, error{p_columns},
               ts_us - ((ts_us - {offset}) % {width}) AS window_us
        FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY request_id, key, key_type
                                           ORDER BY ts_us DESC, version DESC) AS copy
              FROM prediction_source
              WHERE ts_us >= {since} AND ts_us <= {rules.until_us}) AS copies
        WHERE copy = 1
        """,
    )
    engine.keep(
        "labels_read",
        f"SELECT {LABEL_COLUMNS} FROM captured_labels "
        f"UNION ALL SELECT {LABEL_COLUMNS} FROM file_labels",
    )
    engine.keep(
        "labels",
        f"""
        SELECT {LABEL_COLUMNS}
        FROM (SELECT *, ROW_NUMBER() OVER (
                  PARTITION BY key, key_type, request_id
                  ORDER BY time_us DESC NULLS LAST, received_us DESC NULLS LAST,
                           source DESC, file_name DESC, file_row DESC) AS latest
              FROM labels_read) AS ranked
        WHERE latest = 1
        """,
    )
    prediction_columns = (
        "p.version, p.window_us, p.request_id, p.key, p.key_type, p.ts_us, p.prediction, "
        "p.error" + "".join(f", p.{p}" for p in probabilities)
    )
    label_columns = (
        "l.label, l.time_us AS label_time_us, l.received_us AS label_received_us, "
        "l.request_id AS label_request_id"
    )
    chosen = {"last": "from_last = 1", "first": "from_first = 1", "all": "1 = 1"}[rules.policy]
    pair_columns = (
        "version, window_us, request_id, key, key_type, ts_us, prediction, error"
        + p_columns
        + ", label, label_time_us, label_received_us, label_request_id"
    )
    engine.keep(
        "pairs",
        f"""
        SELECT {prediction_columns}, {label_columns}
        FROM labels AS l JOIN predictions AS p
          ON l.request_id = p.request_id AND l.key = p.key AND l.key_type = p.key_type
        WHERE l.request_id IS NOT NULL
        UNION ALL
        SELECT {pair_columns}
        FROM (SELECT {prediction_columns}, {label_columns},
                     ROW_NUMBER() OVER (PARTITION BY l.key, l.key_type
                                        ORDER BY p.ts_us DESC, p.request_id DESC) AS from_last,
                     ROW_NUMBER() OVER (PARTITION BY l.key, l.key_type
                                        ORDER BY p.ts_us ASC, p.request_id ASC) AS from_first
              FROM labels AS l JOIN predictions AS p
                ON l.key = p.key AND l.key_type = p.key_type
              WHERE l.request_id IS NULL
                AND (l.time_us IS NULL OR p.ts_us <= l.time_us)
                AND p.ts_us >= COALESCE(l.time_us, {rules.until_us}) - {rules.max_delay_us}
             ) AS candidates
        WHERE {chosen}
        """,
    )
    pairs = engine.frame(f"SELECT {pair_columns} FROM pairs")

    if classification:
        distribution = "".join(f", AVG({p}) AS mean_{p}" for p in probabilities)
    else:
        distribution = ", AVG(prediction) AS mean, STDDEV_SAMP(prediction) AS std" + "".join(
            f", {engine.quantile('prediction', q)} AS {name}" for name, q in QUANTILES.items()
        )
    windows = engine.frame(
        f"""
        SELECT version, window_us, COUNT(*) AS predictions,
               SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS failed,
               MIN(ts_us) AS first_us, MAX(ts_us) AS last_us{distribution}
        FROM predictions GROUP BY version, window_us
        """
    )
    shares = (
        engine.frame(
            "SELECT version, window_us, prediction, COUNT(*) AS n FROM predictions "
            "WHERE error IS NULL GROUP BY version, window_us, prediction"
        )
        if classification
        else pd.DataFrame(columns=["version", "window_us", "prediction", "n"])
    )
    known = ", ".join(engine.literal(c) for c in capture.classes or [])
    unknown = f"(SELECT COUNT(*) FROM labels WHERE label NOT IN ({known}))" if known else "0"
    since_drops = f"ts_us >= {since} AND ts_us <= {rules.until_us}"
    counts = engine.frame(
        f"""
        SELECT
          (SELECT COUNT(*) FROM labels_read) AS labels,
          (SELECT COUNT(*) FROM labels) AS grouped_labels,
          (SELECT COUNT(*) FROM pairs WHERE label_request_id IS NOT NULL)
            + (SELECT COUNT(*) FROM (SELECT DISTINCT key, key_type FROM pairs
                                     WHERE label_request_id IS NULL) AS by_time) AS matched,
          (SELECT COALESCE(SUM(n - d), 0) FROM (
              SELECT COUNT(*) AS n, COUNT(DISTINCT label) AS d FROM labels_read
              GROUP BY key, key_type, request_id) AS label_groups) AS duplicate_labels,
          (SELECT COUNT(*) FROM (
              SELECT COUNT(DISTINCT label) AS d FROM labels_read
              GROUP BY key, key_type, request_id) AS label_groups
           WHERE d > 1) AS conflicting_labels,
          {unknown} AS unknown_class_labels,
          (SELECT COUNT(*) FROM (SELECT key, key_type FROM predictions GROUP BY key, key_type
                                 HAVING COUNT(*) > 1) AS again) AS keys_predicted_more_than_once,
          (SELECT COUNT(*) FROM predictions AS p
             LEFT JOIN (SELECT DISTINCT request_id, key, key_type FROM pairs) AS j
               ON p.request_id = j.request_id AND p.key = j.key AND p.key_type = j.key_type
           WHERE j.key IS NULL AND p.error IS NULL
             AND p.ts_us + {rules.max_delay_us} <= {rules.until_us}) AS unlabelled_past_max_delay,
          (SELECT COUNT(*) FROM predictions WHERE error IS NOT NULL) AS failed_predictions,
          (SELECT COUNT(*) FROM pairs WHERE error IS NOT NULL) AS labelled_failed,
          (SELECT COALESCE(SUM(dropped), 0) FROM drop_source WHERE {since_drops}) AS capture_drops
        """
    )
    row = {name: int(value) for name, value in counts.iloc[0].items()}
    grouped = row.pop("grouped_labels")
    # The counts in the query's order, with the orphans after the matched.
    diagnostics = {
        "labels": row.pop("labels"),
        "matched": row["matched"],
        "orphan_labels": grouped - row.pop("matched"),
        **row,
    }
    return Joined(_typed(pairs), windows, shares, diagnostics)


def _typed(pairs: pd.DataFrame) -> pd.DataFrame:
    """The engines' frames in one set of types (Spark gives nullable columns as floats or
    objects where DuckDB gives pandas' nullable types)."""
    for column in ("window_us", "ts_us"):
        pairs[column] = pairs[column].astype("int64")
    for column in ("label_time_us", "label_received_us"):
        pairs[column] = pairs[column].astype("Int64")
    for column in ("request_id", "error", "label_request_id"):
        pairs[column] = pairs[column].astype(object).where(pairs[column].notna(), None)
    order = ["version", "ts_us", "key", "key_type", "request_id", "label_request_id"]
    return pairs.sort_values(order, na_position="first", kind="stable").reset_index(drop=True)
