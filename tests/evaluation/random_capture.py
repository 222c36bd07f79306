"""A random capture (seeded), and the join rules computed on it plainly in pandas, row by
row as the contract words them, without the evaluation package's SQL: the reference the
report is checked against, on DuckDB and on Spark."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from captures import CLASSES, T0, write_drops, write_labels, write_predictions

from keyed_serving.capture import layout

HOUR_S = 3600
UNTIL = T0 + datetime.timedelta(days=9)
MAX_DELAY = datetime.timedelta(days=4)


def random_capture(root: Path, seed: int, task: str = "classification") -> dict[str, Any]:
    """Predictions of three versions over a week (keys 0..29 as integers and as text, some
    predicted again, some failed, some retried), and labels (some by request id, some with
    no time, duplicates, conflicts, orphans). Returns the rows written."""
    rng = np.random.default_rng(seed)
    used: set[int] = set()

    def moment(low_h: float, high_h: float) -> datetime.datetime:
        while True:  # distinct microseconds: no two predictions at the same instant
            us = int(rng.integers(int(low_h * 3.6e9), int(high_h * 3.6e9)))
            if us not in used:
                used.add(us)
                return T0 + datetime.timedelta(microseconds=us)

    predictions: dict[str, list[dict[str, Any]]] = {"v2": [], "v10": [], "v3": []}
    spans = {"v2": (-24, 60), "v10": (40, 130), "v3": (120, 230)}  # some after UNTIL (216 h)
    for number in range(260):
        version = str(rng.choice(list(predictions)))
        key: Any = int(rng.integers(0, 30))
        if rng.random() < 0.3:
            key = str(key)
        text, kind = layout.key_text(key)
        ts = moment(*spans[version])
        failed = rng.random() < 0.08
        row: dict[str, Any] = {
            layout.REQUEST_ID: f"r{number}",
            layout.KEY: text,
            layout.KEY_TYPE: kind,
            layout.TS: ts,
            layout.ERROR: "model_error" if failed else None,
            layout.ERROR_MESSAGE: None,
            layout.SOURCE: "predict",
        }
        if task == "classification":
            p_yes = float(rng.random())
            row[layout.PREDICTION] = None if failed else ("yes" if p_yes >= 0.5 else "no")
            row[layout.PROBABILITY_PREFIX + "no"] = None if failed else 1 - p_yes
            row[layout.PROBABILITY_PREFIX + "yes"] = None if failed else p_yes
        else:
            row[layout.PREDICTION] = None if failed else float(np.round(rng.normal(10, 3), 3))
        predictions[version].append(row)
        if rng.random() < 0.1:  # a retry: the same request and key, a little later
            retry = dict(row, **{layout.TS: ts + datetime.timedelta(seconds=2)})
            if task == "classification" and not failed:
                retry[layout.PREDICTION] = "no" if row[layout.PREDICTION] == "yes" else "yes"
            predictions[version].append(retry)

    every = [row for rows in predictions.values() for row in rows]
    labels: list[dict[str, Any]] = []
    for _ in range(220):
        received = T0 + datetime.timedelta(hours=float(rng.uniform(0, 220)))
        if rng.random() < 0.15:  # an orphan key
            text, kind = layout.key_text(int(rng.integers(100, 110)))
            request_id = None
        else:
            source = every[int(rng.integers(0, len(every)))]
            text, kind = source[layout.KEY], source[layout.KEY_TYPE]
            request_id = source[layout.REQUEST_ID] if rng.random() < 0.25 else None
        time = None if rng.random() < 0.2 else moment(-24, 210)
        if task == "classification":
            value = str(rng.choice([*CLASSES, "maybe"], p=[0.47, 0.47, 0.06]))
        else:
            value = repr(float(np.round(rng.normal(10, 3), 1)))
        labels.append(
            {
                layout.KEY: text,
                layout.KEY_TYPE: kind,
                layout.LABEL: value,
                layout.LABEL_TIME: time,
                layout.REQUEST_ID: request_id,
                layout.RECEIVED: received,
                layout.LABEL_MODEL: "churn",
            }
        )
        if rng.random() < 0.15:  # the same label again, or a conflicting one, later
            again = dict(labels[-1], **{layout.RECEIVED: received + datetime.timedelta(hours=1)})
            if rng.random() < 0.5:
                again[layout.LABEL] = CLASSES[0] if task == "classification" else "0.5"
            labels.append(again)
    for version, rows in predictions.items():
        write_predictions(
            root,
            rows,
            version=version,
            task=task,
            classes=CLASSES if task != "regression" else None,
        )
    write_labels(root, labels)
    write_drops(root, [(10, 2), (300, 5)])  # the second after until
    return {"predictions": predictions, "labels": labels, "drops": 2}


def reference(
    written: dict[str, Any], task: str, policy: str, window: str = "day"
) -> dict[str, Any]:
    """The rules, in pandas: the counts of report.json and each version's labelled pairs."""
    frames = [pd.DataFrame(rows).assign(version=v) for v, rows in written["predictions"].items()]
    predictions = pd.concat(frames, ignore_index=True)
    predictions = predictions[predictions[layout.TS] <= UNTIL]
    # a retried request: the latest ts of (request_id, key, key_type)
    predictions = (
        predictions.sort_values(layout.TS)
        .groupby([layout.REQUEST_ID, layout.KEY, layout.KEY_TYPE])
        .tail(1)
    )
    labels = pd.DataFrame(written["labels"])
    labels["order"] = range(len(labels))
    groups = labels.groupby([layout.KEY, layout.KEY_TYPE, layout.REQUEST_ID], dropna=False)
    sizes = groups[layout.LABEL].agg(["size", "nunique"])
    winners = (
        labels.sort_values([layout.LABEL_TIME, layout.RECEIVED, "order"], na_position="first")
        .groupby([layout.KEY, layout.KEY_TYPE, layout.REQUEST_ID], dropna=False)
        .tail(1)
    )

    pairs = []
    matched = 0
    for lab in winners.itertuples(index=False):
        lab_dict = lab._asdict()
        same_key = predictions[
            (predictions[layout.KEY] == lab_dict["key"])
            & (predictions[layout.KEY_TYPE] == lab_dict["key_type"])
        ]
        if lab_dict["request_id"] is not None and not pd.isna(lab_dict["request_id"]):
            chosen = same_key[same_key[layout.REQUEST_ID] == lab_dict["request_id"]]
        else:
            time = lab_dict["time"]
            if pd.isna(time):
                candidates = same_key[same_key[layout.TS] >= UNTIL - MAX_DELAY]
            else:
                candidates = same_key[
                    (same_key[layout.TS] <= time) & (same_key[layout.TS] >= time - MAX_DELAY)
                ]
            candidates = candidates.sort_values(layout.TS)
            chosen = {
                "last": candidates.tail(1),
                "first": candidates.head(1),
                "all": candidates,
            }[policy]
        if len(chosen):
            matched += 1
        for prediction in chosen.itertuples(index=False):
            pairs.append({**prediction._asdict(), "label": lab_dict["label"]})
    pairs_frame = pd.DataFrame(pairs)
    joined_ids = set(
        zip(pairs_frame["request_id"], pairs_frame["key"], pairs_frame["key_type"], strict=True)
    )
    scored = pairs_frame[pairs_frame["error"].isna()]

    width = {"hour": "h", "day": "D", "week": "W-SUN"}[window]
    predictions["window"] = (
        predictions[layout.TS].dt.tz_convert(None).dt.to_period(width).dt.start_time
    )
    scored = scored.assign(
        window=scored[layout.TS].dt.tz_convert(None).dt.to_period(width).dt.start_time
    )
    versions = {}
    for version, rows in predictions.groupby("version"):
        mine = scored[scored["version"] == version]
        failed = int(rows[layout.ERROR].notna().sum())
        windows = []
        for start, in_window in rows.groupby("window"):
            answered = in_window[in_window[layout.ERROR].isna()]
            mine_here = mine[mine["window"] == start]
            entry: dict[str, Any] = {
                "start": start.isoformat() + "Z",
                "predictions": len(in_window),
                "failed": int(in_window[layout.ERROR].notna().sum()),
                "labelled": len(mine_here),
                "pairs": mine_here,
            }
            if task == "classification":
                entry["share"] = {
                    c: float((answered[layout.PREDICTION] == c).mean()) for c in CLASSES
                }
                entry["mean_probability"] = {
                    c: float(answered[layout.PROBABILITY_PREFIX + c].mean()) for c in CLASSES
                }
            else:
                values = answered[layout.PREDICTION].astype(float)
                entry["distribution"] = {
                    "mean": values.mean(),
                    "std": values.std(),
                    "p10": values.quantile(0.1),
                    "p50": values.quantile(0.5),
                    "p90": values.quantile(0.9),
                }
            windows.append(entry)
        versions[version] = {
            "predictions": len(rows),
            "failed": failed,
            "labelled": len(mine),
            "coverage": len(mine) / (len(rows) - failed),
            "first": rows[layout.TS].min(),
            "pairs": mine,
            "windows": windows,
        }
    unlabelled = [
        row
        for row in predictions.itertuples(index=False)
        if pd.isna(row.error)
        and row.ts + MAX_DELAY <= UNTIL
        and (row.request_id, row.key, row.key_type) not in joined_ids
    ]
    per_key = predictions.groupby([layout.KEY, layout.KEY_TYPE]).size()
    diagnostics = {
        "labels": len(labels),
        "matched": matched,
        "orphan_labels": len(winners) - matched,
        "duplicate_labels": int((sizes["size"] - sizes["nunique"]).sum()),
        "conflicting_labels": int((sizes["nunique"] > 1).sum()),
        "unknown_class_labels": (
            int((~winners[layout.LABEL].isin(CLASSES)).sum()) if task == "classification" else 0
        ),
        "keys_predicted_more_than_once": int((per_key > 1).sum()),
        "unlabelled_past_max_delay": len(unlabelled),
        "failed_predictions": int(predictions[layout.ERROR].notna().sum()),
        "labelled_failed": int(pairs_frame["error"].notna().sum()),
        "capture_drops": written["drops"],
    }
    return {"versions": versions, "diagnostics": diagnostics}
