"""Issue 17 as a stranger uses it, against real servers: their own regressor (served by its
bare name, retrained while it serves), a client that retries a request at once, labels
posted and from their own CSV, keyed-evaluate's report checked against scikit-learn and
opened in Chromium; and a model whose zip codes are text, called through tritonclient and
read back with the README's own snippets."""

from __future__ import annotations

import json
import shutil
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
from exact_values import import_visit_model, import_zip_model, zip_table
from sklearn import metrics as skm
from support import ROOT, Server, free_port, instance_features, make_customer_table, train_with_cli

from keyed_serving.capture import layout

pytestmark = pytest.mark.slow
FEATURES = ("plan", "region", "tenure_months", "support_tickets", "churned")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def train_spend(csv: Path, home: str | None = None) -> str:
    """A regressor of monthly spend, trained by train.py as its README says; its tag."""
    return train_with_cli(csv, "monthly_spend", "spend", "--task", "regression", home=home)


def spend_table(rows: int, seed: int) -> pd.DataFrame:
    table = make_customer_table(rows, seed=seed)
    return table[table["monthly_spend"].notna()].reset_index(drop=True)


def features_of(table: pd.DataFrame, i: int) -> dict[str, Any]:
    return instance_features(table, i, FEATURES)


@dataclass
class Spend:
    capture: Path
    tag: str
    retrained: str
    answered: pd.DataFrame  # request_id, key, prediction, model, order
    labels: pd.DataFrame  # key, label (the latest of each key), from where
    report: dict[str, Any]
    html: Path
    terminal: str


def predict(url: str, request_id: str, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = httpx.post(
        url + "/predict",
        json={"instances": instances},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return [
        {
            "request_id": request_id,
            "key": got["key"],
            "prediction": got["prediction"],
            "model": body["model"],
        }
        for got in body["predictions"]
    ]


@pytest.fixture(scope="module")
def spend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spend]:
    folder = tmp_path_factory.mktemp("spend")
    spend_table(800, seed=3).to_csv(folder / "spend.csv", index=False)
    tag = train_spend(folder / "spend.csv")
    rows = spend_table(400, seed=4)
    capture = folder / "capture"
    server = Server(MODEL_TAG="spend", KEYED_CAPTURE_DIR=str(capture), KEYED_CAPTURE_FLUSH_S="0.3")
    answered: list[dict[str, Any]] = []
    try:
        first = [{"key": f"k-{i}", "features": features_of(rows, i)} for i in range(60)]
        answered += predict(server.url, "r1", first)
        answered += predict(server.url, "r1", first)  # a retry at once, the same request id
        again = [{"key": f"k-{i}", "features": features_of(rows, 100 + i)} for i in range(20)]
        answered += predict(server.url, "r2a", again)
        answered += predict(server.url, "r2b", again)  # the same body, another request id
        # A new version of "spend" saved into the server's own store while it serves.
        spend_table(800, seed=8).to_csv(folder / "spend2.csv", index=False)
        retrained = train_spend(folder / "spend2.csv", home=str(server.home))
        later = [{"key": f"k-{i}", "features": features_of(rows, 200 + i)} for i in range(60, 80)]
        answered += predict(server.url, "r3", later)
        predicted = {a["key"]: a["prediction"] for a in answered}  # the latest of each key
        posted = [
            {"key": f"k-{i}", "label": round(predicted[f"k-{i}"] + (i % 7 - 3) * 2.5, 2)}
            for i in range(30)
        ]
        response = httpx.post(server.url + "/labels", json={"labels": posted}, timeout=60)
        assert response.status_code == 200 and response.json()["accepted"] == 30, response.text
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()
    observed = pd.Timestamp.now(tz="UTC").isoformat()
    from_file = pd.DataFrame(
        {
            "customer_id": [f"k-{i}" for i in range(30, 70)] + ["k-never"],
            "spend": [round(predicted.get(f"k-{i}", 0) * 1.1 - 3, 2) for i in range(30, 71)],
            "observed_at": observed,
        }
    )
    from_file.to_csv(folder / "outcomes.csv", index=False)
    out = folder / "report"
    out.mkdir()
    done = subprocess.run(
        [
            *(str(Path(sys.executable).parent / "keyed-evaluate"), str(capture)),
            *("--labels", str(folder / "outcomes.csv"), "--key", "customer_id"),
            *("--label", "spend", "--time", "observed_at"),
            *("--json", str(out / "report.json"), "--out", str(out / "report.html")),
            *("--min-count", "10"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    labels = pd.concat(
        [
            pd.DataFrame(posted).assign(source="posted"),
            from_file.rename(columns={"customer_id": "key", "spend": "label"})[
                ["key", "label"]
            ].assign(source="file"),
        ]
    )
    yield Spend(
        capture,
        tag,
        retrained,
        pd.DataFrame(answered).assign(order=range(len(answered))),
        labels,
        json.loads((out / "report.json").read_text()),
        out / "report.html",
        done.stdout + done.stderr,
    )


def captured(root: Path) -> pd.DataFrame:
    """The capture read as the README says: DuckDB, partition values as text."""
    import duckdb

    glob = str(root / layout.PREDICTIONS / "**" / "*.parquet")
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true, hive_types_autocast=false)"
    ).df()


def test_a_retrain_while_serving_leaves_every_row_with_the_version_that_answered(
    spend: Spend,
) -> None:
    assert spend.retrained != spend.tag
    assert set(spend.answered["model"]) == {spend.tag}  # the server serves what it loaded
    rows = captured(spend.capture)
    assert len(rows) == len(spend.answered)  # the retry is captured too: 60 + 60 + 20 + 20 + 20
    assert set(rows["model"]) == {"spend"}
    assert set(rows["version"]) == {spend.tag.split(":")[1]}


def test_a_regressors_report_is_scikit_learns_numbers_on_the_pairs_the_rules_make(
    spend: Spend,
) -> None:
    report = spend.report
    assert report["task"] == "regression" and report["classes"] is None
    [(version, got)] = report["versions"].items()
    assert version == spend.tag.split(":")[1]
    # The retry of r1 counts once; r2a and r2b are two predictions of the same keys.
    unique = spend.answered.drop_duplicates(["request_id", "key"], keep="last")
    assert got["predictions"] == len(unique) == 120
    diagnostics = report["diagnostics"]
    assert diagnostics["keys_predicted_more_than_once"] == 20
    assert diagnostics["labels"] == 30 + 41
    assert diagnostics["orphan_labels"] == 1  # k-never
    assert diagnostics["matched"] == 70
    # Each label meets the latest prediction of its key (their times are after all).
    latest = unique.drop_duplicates("key", keep="last").set_index("key")["prediction"]
    pairs = spend.labels[spend.labels["key"].isin(latest.index)]
    y_true = pairs["label"].to_numpy(float)
    y_pred = latest[pairs["key"]].to_numpy(float)
    expected = {
        "mae": skm.mean_absolute_error(y_true, y_pred),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": skm.r2_score(y_true, y_pred),
        "bias": float(np.mean(y_pred - y_true)),
    }
    assert got["labelled"] == len(pairs) == 70
    for name, value in expected.items():
        metric = got["metrics"][name]
        assert metric["n"] == 70 and metric["too_few"] is False, name
        assert metric["value"] == pytest.approx(value, abs=1e-9), name
        assert metric["low"] <= metric["value"] <= metric["high"], name
    assert "confusion_matrix" not in got["metrics"] and "calibration" not in got
    residuals = got["residuals"]
    assert sum(residuals["counts"]) == 70
    assert (
        residuals["edges"][0] <= min(y_pred - y_true)
        and max(y_pred - y_true) <= residuals["edges"][-1]
    )
    # Drift, without labels: the windows' mean of every prediction made (after the dedup).
    windows = got["windows"]
    assert sum(w["predictions"] for w in windows) == 120
    mean = sum(w["distribution"]["mean"] * w["predictions"] for w in windows) / 120
    assert mean == pytest.approx(unique["prediction"].mean(), abs=1e-9)
    assert "orphan label(s) have a key predicted only as another type" not in spend.terminal


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make browser)")
def test_the_regressors_page_is_drawn_in_chromium(spend: Spend) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            fetched: list[str] = []
            page.on("request", lambda request: fetched.append(request.url))
            page.goto(spend.html.as_uri(), wait_until="load")
            drawn = page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll("figure.chart")].map(
                     f => [f.id, [...f.querySelectorAll("g.mark")].filter(
                       m => m.querySelector("path, use") &&
                            m.getBoundingClientRect().width > 0).length]))"""
            )
        finally:
            browser.close()
    assert fetched == [spend.html.as_uri()]
    for chart in ("mae", "rmse", "r2", "bias"):
        assert drawn[f"chart-metric-{chart}"] > 0, drawn
    assert drawn["chart-residuals"] > 0 and drawn["chart-distribution"] > 0, drawn
    assert drawn["chart-coverage"] > 0 and drawn["chart-delay"] > 0, drawn


# --- a model whose zip codes are text, called by clients the project did not write ---------


@dataclass
class Zips:
    capture: Path
    sent: dict[tuple[str, str], Any]  # (request id, key) -> the zip sent (None: missing)
    sources: dict[str, str]  # request id -> the route's source


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zips]:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    folder = tmp_path_factory.mktemp("zips")
    tag, _ = import_zip_model(folder)
    name = tag.split(":")[0]
    capture = folder / "capture"
    grpc_port = free_port()
    table = zip_table(40, seed=9)
    zips = ["02134", "00501", None, "10001", "94105", "02134"]
    server = Server(
        MODEL_TAG=tag,
        KEYED_CAPTURE_DIR=str(capture),
        KEYED_CAPTURE_FLUSH_S="3600",
        KEYED_GRPC_PORT=str(grpc_port),
    )
    sent: dict[tuple[str, str], Any] = {}
    try:
        instances = [
            {"key": f"row-{i}", "features": {"zip": z, "amount": 50.0 + i}}
            for i, z in enumerate(zips)
        ]
        response = httpx.post(
            server.url + "/predict",
            json={"instances": instances},
            headers={"X-Request-ID": "rows"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        sent |= {("rows", f"row-{i}"): z for i, z in enumerate(zips)}
        given = [z for z in zips if z is not None]
        keys = [f"v2-{i}" for i in range(len(given))]

        def inputs(module: Any, binary: bool) -> list[Any]:
            made = []
            for input_name, values, datatype in (
                ("key", np.array(keys, dtype=object), "BYTES"),
                ("zip", np.array(given, dtype=object), "BYTES"),
                ("amount", np.full(len(given), 42.0), "FP64"),
            ):
                one = module.InferInput(input_name, [len(given)], datatype)
                if module is triton_http:
                    one.set_data_from_numpy(values, binary_data=binary)
                else:
                    one.set_data_from_numpy(values)
                made.append(one)
            return made

        http_client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        for rid, binary in (("v2json", False), ("v2bin", True)):
            http_client.infer(name, inputs(triton_http, binary), headers={"X-Request-ID": rid})
            sent |= {(rid, k): z for k, z in zip(keys, given, strict=True)}
        grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        grpc_client.infer(name, inputs(triton_grpc, True), request_id="grpc")
        sent |= {("grpc", k): z for k, z in zip(keys, given, strict=True)}
        # The user's own CSV, zip codes with their leading zeros.
        csv = table[["id", "zip", "amount"]].to_csv(index=False).encode()
        response = httpx.post(
            server.url + "/predict_file",
            data={"key": "id"},
            files={"file": ("zips.csv", csv)},
            headers={"X-Request-ID": "file"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        sent |= {
            ("file", k): None if pd.isna(z) else z
            for k, z in zip(table["id"], table["zip"], strict=True)
        }
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()  # SIGTERM: the capture is written
    sources = {
        "rows": "predict",
        "v2json": "v2_http",
        "v2bin": "v2_http",
        "grpc": "v2_grpc",
        "file": "predict_file",
    }
    yield Zips(capture, sent, sources)


def test_zip_codes_are_captured_as_the_text_the_user_sent_from_every_client(zips: Zips) -> None:
    rows = captured(zips.capture)
    assert len(rows) == len(zips.sent)
    for row in rows.itertuples():
        expected = zips.sent[row.request_id, row.key]
        got = None if pd.isna(row.feature_zip) else row.feature_zip
        assert got == expected, (row.request_id, row.key, row.feature_zip)
        assert row.key_type == "str" and row.source == zips.sources[row.request_id]


def test_the_readmes_snippets_read_the_capture_as_written(
    zips: Zips, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's snippets (DuckDB, pyarrow), run as written from the capture's parent."""
    import duckdb

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Monitor the model") :]
    section = section[: section.index("\n## ", 10)]
    snippets = [
        block.split("\n", 1)[1]
        for block in section.split("```")[1::2]
        if block.startswith("python")
    ]
    assert snippets
    monkeypatch.chdir(zips.capture.parent)
    for snippet in snippets:
        found: dict[str, Any] = {}
        exec(snippet, found)
        relations = [v for v in found.values() if isinstance(v, duckdb.DuckDBPyRelation)]
        if "predictions" in found:  # pyarrow's
            read = found["predictions"]
            assert len(read) == len(zips.sent)
            assert set(read["feature_zip"].dropna()) <= {"00501", "02134", "10001", "94105"}
            assert all(isinstance(v, str) for v in read["version"])
        else:
            [relation] = relations
            counted = dict(relation.fetchall())
            assert sum(counted.values()) == len(zips.sent)
    assert len(snippets) >= 2


def test_datetimes_are_captured_as_the_instants_the_user_sent(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A model fitted on zoned date-times (Europe/Paris): each sent offset is kept as the same
    instant, in UTC; a missing one is null."""
    import datetime

    folder = tmp_path_factory.mktemp("visits")
    tag, _ = import_visit_model(folder, zone="Europe/Paris")
    capture = folder / "capture"
    sent = {
        "a": "2024-01-05T10:30:00+05:00",
        "b": "2024-03-31T02:30:00+00:00",  # an hour that does not exist in Paris
        "c": "2024-01-05T10:30:00.123456-08:00",
        "d": None,
    }
    server = Server(MODEL_TAG=tag, KEYED_CAPTURE_DIR=str(capture), KEYED_CAPTURE_FLUSH_S="3600")
    try:
        response = httpx.post(
            server.url + "/predict",
            json={
                "instances": [{"key": k, "features": {"when": v}} for k, v in sent.items()],
                "errors": "per_instance",
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    rows = captured(capture).set_index("key")
    assert set(rows.index) == set(sent)
    for key, text in sent.items():
        got = rows.loc[key, "feature_when"]
        if text is None:
            assert pd.isna(got)
        else:
            expected = datetime.datetime.fromisoformat(text).astimezone(datetime.UTC)
            assert got.to_pydatetime() == expected, (key, got)
