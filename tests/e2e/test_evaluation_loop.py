"""The whole loop of issue 17 against real servers: predictions captured by key under two
model versions, labels posted later, ``keyed-evaluate`` joining them, and every count and
metric of its report.json equal to the same rules computed here, independently, in pandas
from what the client itself was answered.

The scenario, in time order:
1. version 1 serves request r1 (every key, features A; one instance that cannot be
   predicted, answered with its error), then request r2 (half the keys again, features B);
2. version 2 (a restart with another MODEL_TAG, the same capture directory) serves r3 (the
   other half again, features C, and new keys);
3. labels arrive: some with a time between r1 and r2 (they must meet r1's prediction, not
   the later one), some with no time (the latest prediction), some naming r3 by its
   request id, integer keys, and orphans, a duplicate and a conflict.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from support import Server, instance_features, make_customer_table, train_with_cli

pytestmark = pytest.mark.slow

FLUSH_S = "0.3"
POSITIVE = "yes"


@dataclass
class Answered:
    request_id: str
    key: Any
    version: str
    features: dict[str, Any]
    prediction: str | None
    probabilities: dict[str, float] | None
    error: str | None
    before: datetime.datetime  # the client's clock around the request
    after: datetime.datetime


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def tick() -> datetime.datetime:
    """A time strictly after everything answered so far, and strictly before anything sent
    next (the clock is polled until it moves on)."""
    start = now()
    while now() <= start + datetime.timedelta(milliseconds=20):
        pass
    mark = now()
    while now() <= mark + datetime.timedelta(milliseconds=20):
        pass
    return mark


@pytest.fixture(scope="module")
def second_version(customer_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same model retrained on other rows: a second version of "customers"."""
    csv = tmp_path_factory.mktemp("retrain") / "customers_v2.csv"
    make_customer_table(1500, seed=99).to_csv(csv, index=False)
    tag = train_with_cli(csv, "churned", "customers")
    assert tag != customer_model
    return tag


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return make_customer_table(400, seed=5)


def features_of(rows: pd.DataFrame, i: int) -> dict[str, Any]:
    names = ("plan", "region", "tenure_months", "monthly_spend", "support_tickets")
    return instance_features(rows, i, names)


def predict(
    url: str, request_id: str, instances: list[dict[str, Any]], version: str
) -> list[Answered]:
    before = now()
    response = httpx.post(
        url + "/predict",
        json={"instances": instances, "errors": "per_instance"},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    after = now()
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    body = response.json()
    assert body["model"] == version
    answered = []
    for sent, got in zip(instances, body["predictions"], strict=True):
        assert got["key"] == sent["key"]
        error = got.get("error")
        answered.append(
            Answered(
                request_id,
                sent["key"],
                version.split(":")[1],
                sent["features"],
                None if error else got["prediction"],
                None if error else got["probabilities"],
                error["code"] if error else None,
                before,
                after,
            )
        )
    return answered


def post_labels(url: str, labels: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(url + "/labels", json={"labels": labels}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@dataclass
class Loop:
    capture: Path
    answered: list[Answered]
    labels: pd.DataFrame  # key, key_type, label, time, request_id, order (as posted)
    report: dict[str, Any]
    html: Path


@pytest.fixture(scope="module")
def loop(
    customer_model: str,
    second_version: str,
    rows: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Loop]:
    capture = tmp_path_factory.mktemp("capture")
    env = {"KEYED_CAPTURE_DIR": str(capture), "KEYED_CAPTURE_FLUSH_S": FLUSH_S}
    strings = [f"s-{i}" for i in range(80)]
    integers = list(range(1000, 1010))
    answered: list[Answered] = []

    server = Server(MODEL_TAG=customer_model, **env)
    try:
        first = [{"key": k, "features": features_of(rows, i)} for i, k in enumerate(strings[:60])]
        first += [
            {"key": k, "features": features_of(rows, 100 + i)} for i, k in enumerate(integers)
        ]
        bad = features_of(rows, 0) | {"tenure_months": "not a number"}
        first.append({"key": "bad-0", "features": bad})
        answered += predict(server.url, "r1", first, customer_model)
        between = tick()
        second = [
            {"key": k, "features": features_of(rows, 200 + i)} for i, k in enumerate(strings[:30])
        ]
        answered += predict(server.url, "r2", second, customer_model)
    finally:
        server.stop()  # SIGTERM: the capture is flushed

    server = Server(MODEL_TAG=second_version, **env)
    try:
        third = [
            {"key": k, "features": features_of(rows, 300 + i)} for i, k in enumerate(strings[30:80])
        ]
        answered += predict(server.url, "r3", third, second_version)
        truth = {a.key: rows.iloc[i % 400]["churned"] for i, a in enumerate(answered)}
        at_between = between.isoformat()
        labels: list[dict[str, Any]] = []
        labels += [{"key": k, "label": truth[k], "time": at_between} for k in strings[:20]]
        labels += [{"key": k, "label": truth[k]} for k in strings[20:45]]
        labels += [{"key": k, "label": truth[k], "request_id": "r3"} for k in strings[60:80]]
        labels += [{"key": k, "label": truth[k]} for k in integers[:5]]
        labels += [
            {"key": "1000", "label": "yes"},  # a string key: not the integer key 1000
            {"key": "never-1", "label": "no"},
            {"key": "never-2", "label": "yes", "time": at_between},
            {"key": "s-0", "label": "yes", "request_id": "no-such-request"},
            {"key": "bad-0", "label": "no"},  # its prediction failed: counted, not scored
            {"key": "s-1", "label": truth["s-1"], "time": at_between},  # a duplicate
        ]
        said = post_labels(server.url, labels)
        assert said["accepted"] == len(labels), said
        # s-2 again, later and with the other value: a conflict, and this one wins.
        flipped = "no" if truth["s-2"] == "yes" else "yes"
        late = [{"key": "s-2", "label": flipped, "time": at_between}]
        assert post_labels(server.url, late)["accepted"] == 1
        labels += late
    finally:
        server.stop()

    out = tmp_path_factory.mktemp("report")
    done = subprocess.run(
        [
            *(str(Path(sys.executable).parent / "keyed-evaluate"), str(capture)),
            *("--json", str(out / "report.json"), "--out", str(out / "report.html")),
            *("--window", "hour", "--min-count", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.DataFrame(labels)
    table["order"] = range(len(table))
    yield Loop(
        capture,
        answered,
        table,
        json.loads((out / "report.json").read_text()),
        out / "report.html",
    )


def expected_pairs(loop: Loop) -> tuple[pd.DataFrame, dict[str, int]]:
    """The join rules, plainly, on the client's own record: for each label (the latest of
    its key and request id), the prediction it meets."""
    predictions = pd.DataFrame([a.__dict__ for a in loop.answered])
    predictions["key_type"] = [type(k).__name__ for k in predictions["key"]]
    predictions["key"] = predictions["key"].astype(str)
    labels = loop.labels.copy()
    labels["key_type"] = [type(k).__name__ for k in labels["key"]]
    labels["key"] = labels["key"].astype(str)
    labels["time"] = pd.to_datetime(labels.get("time"), utc=True)
    labels["request_id"] = labels.get("request_id")
    counts = {"labels": len(labels), "duplicate_labels": 0, "conflicting_labels": 0}
    latest = []
    group_keys = ["key", "key_type", labels["request_id"].fillna("\0")]
    for _, group in labels.groupby(group_keys, sort=False):
        ordered = group.sort_values(["time", "order"], na_position="first")
        distinct = group["label"].nunique()
        counts["duplicate_labels"] += len(group) - distinct  # a value said again
        counts["conflicting_labels"] += int(distinct > 1)
        latest.append(ordered.iloc[-1])
    pairs, orphans = [], 0
    for label in latest:
        same = predictions[
            (predictions["key"] == label["key"]) & (predictions["key_type"] == label["key_type"])
        ]
        if isinstance(label["request_id"], str):
            same = same[same["request_id"] == label["request_id"]]
        elif not pd.isna(label["time"]):
            # The client's "after" bounds the server's answer time from above.
            same = same[same["after"] <= label["time"]]
        if same.empty:
            orphans += 1
            continue
        met = same.sort_values("after").iloc[-1]
        pairs.append({**met.to_dict(), "label": label["label"]})
    counts["orphan_labels"] = orphans
    counts["matched"] = len(latest) - orphans
    seen = predictions.groupby(["key", "key_type"]).size()
    counts["keys_predicted_more_than_once"] = int((seen > 1).sum())
    counts["failed_predictions"] = int(predictions["error"].notna().sum())
    return pd.DataFrame(pairs), counts


def test_every_count_and_metric_of_the_report_is_the_rules_computed_independently(
    loop: Loop, customer_model: str, second_version: str
) -> None:
    report = loop.report
    pairs, counts = expected_pairs(loop)
    assert report["model"] == "customers"
    assert report["task"] == "classification"
    assert report["classes"] == ["no", "yes"]
    diagnostics = report["diagnostics"]
    for name, value in counts.items():
        assert diagnostics[name] == value, name
    assert diagnostics["labelled_failed"] == int(pairs["error"].notna().sum()) == 1
    assert diagnostics["capture_drops"] == 0
    assert diagnostics["unknown_class_labels"] == 0
    assert diagnostics["unlabelled_past_max_delay"] == 0  # nothing is 30 days old yet

    predictions = pd.DataFrame([a.__dict__ for a in loop.answered])
    scored = pairs[pairs["error"].isna()]
    assert set(report["versions"]) == {customer_model.split(":")[1], second_version.split(":")[1]}
    for version, got in report["versions"].items():
        made = predictions[predictions["version"] == version]
        mine = scored[scored["version"] == version]
        assert got["predictions"] == len(made)
        assert got["failed"] == int(made["error"].notna().sum())
        assert got["labelled"] == len(mine) > 0
        assert got["coverage"] == pytest.approx(len(mine) / (len(made) - got["failed"]))
        assert sum(w["labelled"] for w in got["windows"]) == len(mine)
        assert sum(w["predictions"] for w in got["windows"]) == len(made)
        assert not any(w["complete"] for w in got["windows"])  # labels may still come

        y_true = mine["label"].to_numpy()
        y_pred = mine["prediction"].to_numpy()
        proba = np.array([[p["no"], p["yes"]] for p in mine["probabilities"]])
        onehot = np.stack([y_true == "no", y_true == "yes"], axis=1).astype(float)
        expected = {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
            "f1_macro": skm.f1_score(y_true, y_pred, average="macro"),
            "log_loss": skm.log_loss(y_true, proba, labels=["no", "yes"]),
            "roc_auc": skm.roc_auc_score(y_true == POSITIVE, proba[:, 1]),
            "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
        }
        for name, value in expected.items():
            metric = got["metrics"][name]
            assert metric["n"] == len(mine), name
            assert metric["value"] == pytest.approx(value, abs=1e-9), name
            assert metric["too_few"] is False
            assert metric["low"] <= metric["value"] <= metric["high"], name
        matrix = got["metrics"]["confusion_matrix"]
        assert matrix["labels"] == ["no", "yes"]
        assert (
            matrix["counts"] == skm.confusion_matrix(y_true, y_pred, labels=["no", "yes"]).tolist()
        )


def test_the_capture_holds_every_answered_instance_with_the_values_the_model_got(
    loop: Loop,
) -> None:
    import pyarrow.dataset as ds

    from keyed_serving.capture.layout import PREDICTIONS

    dataset = ds.dataset(
        loop.capture / PREDICTIONS,
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=True,
    )
    captured = dataset.to_table().to_pandas()
    assert len(captured) == len(loop.answered)
    by_id = {(row.request_id, row.key, row.key_type): row for row in captured.itertuples()}
    for a in loop.answered:
        row = by_id[(a.request_id, str(a.key), type(a.key).__name__)]
        assert str(row.version) == a.version
        if a.error is None:
            assert pd.isna(row.error) and row.prediction == a.prediction
            assert row.feature_plan == a.features["plan"]
            got = row.feature_tenure_months
            sent = a.features["tenure_months"]
            assert (np.isnan(got) and sent is None) or got == sent
            assert row.probability_yes == a.probabilities["yes"]  # type: ignore[index]
        else:
            assert row.error == a.error and pd.isna(row.prediction)
        assert a.before <= row.ts.to_pydatetime() <= a.after


def test_the_html_report_is_written_and_self_contained(loop: Loop) -> None:
    html = loop.html.read_text()
    assert "<svg" in html
    for remote in ('src="http', 'href="http', "@import", "url(http"):
        assert remote not in html
