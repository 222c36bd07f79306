"""Capture and POST /labels against a real `bentoml serve` with KEYED_CAPTURE_DIR: every route
captures one row per instance answered (and nothing for a request refused whole), a SIGTERM
loses nothing, a SIGKILL of the whole tree at most one flush interval, an unwritable
directory keeps every answer 200 and counts the drops. Read back as any reader would: a
Hive-partitioned Parquet dataset, partition values as text (pyarrow, DuckDB)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from support import Server, free_port, make_customer_table

from keyed_serving.capture import layout
from keyed_serving.model.store import load_spec

pytestmark = pytest.mark.slow
NUMBERS = ("tenure_months", "monthly_spend", "support_tickets")
CATEGORIES = ("plan", "region")


def predictions_of(root: Path) -> pd.DataFrame:
    """Every captured prediction under ``root``, partition columns as text."""
    partitioning = ds.partitioning(
        pa.schema([(name, pa.string()) for name in layout.PREDICTION_PARTITIONS]), flavor="hive"
    )
    directory = root / layout.PREDICTIONS
    if not directory.exists():
        return pd.DataFrame(columns=[*layout.PREDICTION_COLUMNS, "model", "version", "date"])
    dataset = ds.dataset(directory, format="parquet", partitioning=partitioning)
    return dataset.to_table().to_pandas()


def labels_of(root: Path) -> pd.DataFrame:
    partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    dataset = ds.dataset(root / layout.LABELS, format="parquet", partitioning=partitioning)
    return dataset.to_table().to_pandas()


def instances(frame: pd.DataFrame, keys: list[Any]) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        return None if isinstance(value, float) and np.isnan(value) else value

    return [
        {"key": key, "features": {n: plain(row[n]) for n in (*NUMBERS, *CATEGORIES)}}
        for key, (_, row) in zip(keys, frame.iterrows(), strict=True)
    ]


def columns_of(frame: pd.DataFrame) -> dict[str, list[Any]]:
    return {
        name: [None if isinstance(v, float) and np.isnan(v) else v for v in frame[name]]
        for name in (*NUMBERS, *CATEGORIES)
    }


def v2_inputs(module: Any, frame: pd.DataFrame, keys: list[str], binary: bool) -> list[Any]:
    n = len(frame)

    def tensor(name: str, values: np.ndarray, datatype: str) -> Any:
        made = module.InferInput(name, [n], datatype)
        if module is triton_http:
            made.set_data_from_numpy(values, binary_data=binary)
        else:
            made.set_data_from_numpy(values)
        return made

    made = [tensor("key", np.array(keys, dtype=object), "BYTES")]
    made += [tensor(name, frame[name].to_numpy(dtype=np.float64), "FP64") for name in NUMBERS]
    made += [
        tensor(
            name, np.array([v if isinstance(v, str) else "" for v in frame[name]], object), "BYTES"
        )
        for name in CATEGORIES
    ]
    return made


class Run:
    """One server's traffic on every route, what each request was answered, and the capture
    read back after a SIGTERM."""

    def __init__(self, tag: str, root: Path) -> None:
        self.tag = tag
        self.root = root
        self.spec = load_spec(tag)
        self.frame = make_customer_table(200, seed=23)
        self.answers: dict[str, dict[Any, Any]] = {}  # request id -> key -> prediction
        self.sent: dict[str, pd.DataFrame] = {}  # request id -> the rows sent, by key
        self.label_answers: list[httpx.Response] = []

    def rows(self, start: int, stop: int, keys: list[Any], rid: str) -> pd.DataFrame:
        sent = self.frame.iloc[start:stop].copy()
        sent.index = pd.Index(keys, dtype=object)
        self.sent[rid] = sent
        return sent

    def drive(self, server: Server, grpc_port: int) -> None:
        http = httpx.Client(base_url=server.url, timeout=60)
        name = self.tag.split(":")[0]
        # /predict rows, in per-instance mode with one instance refused (a missing feature).
        sent = self.rows(0, 6, [1, 2, 3, 4, 5, "six"], "rows-1")
        body = instances(sent, list(sent.index))
        del body[5]["features"]["plan"]
        answer = http.post(
            "/predict",
            json={"instances": body, "errors": "per_instance"},
            headers={"X-Request-ID": "rows-1"},
        )
        assert answer.status_code == 200, answer.text
        self.answers["rows-1"] = {
            p["key"]: p.get("prediction") for p in answer.json()["predictions"]
        }
        # /predict columns.
        sent = self.rows(6, 26, [f"c-{i}" for i in range(20)], "cols-1")
        answer = http.post(
            "/predict",
            json={"keys": list(sent.index), "columns": columns_of(sent)},
            headers={"X-Request-ID": "cols-1"},
        )
        assert answer.status_code == 200, answer.text
        self.answers["cols-1"] = dict(
            zip(answer.json()["keys"], answer.json()["predictions"], strict=True)
        )
        # V2 over HTTP, JSON and binary (tritonclient), and over gRPC (with and without
        # the V2 request's own id).
        for rid, binary, start in (("v2json-1", False, 26), ("v2bin-1", True, 36)):
            keys = [f"{rid}-{i}" for i in range(10)]
            sent = self.rows(start, start + 10, keys, rid)
            client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
            result = client.infer(
                name,
                v2_inputs(triton_http, sent, keys, binary),
                headers={"X-Request-ID": rid},
                outputs=[triton_http.InferRequestedOutput("prediction", binary_data=binary)],
            )
            predicted = [text(p) for p in result.as_numpy("prediction")]
            self.answers[rid] = dict(zip(keys, predicted, strict=True))
        grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for rid, start, own_id in (("grpc-1", 46, True), ("grpcmeta-1", 56, False)):
            keys = [f"{rid}-{i}" for i in range(10)]
            sent = self.rows(start, start + 10, keys, rid)
            result = grpc_client.infer(
                name,
                v2_inputs(triton_grpc, sent, keys, True),
                request_id=rid if own_id else "",
                headers=None if own_id else {"x-request-id": rid},
            )
            predicted = [text(p) for p in result.as_numpy("prediction")]
            self.answers[rid] = dict(zip(keys, predicted, strict=True))
        # /predict_file, and the task.
        sent = self.rows(66, 96, [f"f-{i}" for i in range(30)], "file-1")
        answer = http.post(
            "/predict_file",
            data={"key": "id"},
            files={"file": ("a.csv", self.csv(sent))},
            headers={"X-Request-ID": "file-1"},
        )
        assert answer.status_code == 200, answer.text
        scored = pd.read_csv(io.BytesIO(answer.content))
        self.answers["file-1"] = dict(zip(scored["id"], scored["prediction"], strict=True))
        sent = self.rows(96, 121, [f"t-{i}" for i in range(25)], "task-1")
        submitted = http.post(
            "/predict_file_task/submit",
            data={"key": "id"},
            files={"file": ("b.csv", self.csv(sent))},
            headers={"X-Request-ID": "task-1"},
        )
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        status, deadline = "in_progress", time.monotonic() + 60
        while status == "in_progress" and time.monotonic() < deadline:
            time.sleep(0.1)  # the task API has no push; polling it is its protocol
            status = http.get("/predict_file_task/status", params={"task_id": task_id}).json()[
                "status"
            ]
        assert status == "completed"
        # Refused whole: nothing answered, nothing captured.
        body = instances(self.frame.iloc[121:123], ["rej-a", "rej-b"])
        del body[0]["features"]["plan"]
        refused = http.post(
            "/predict", json={"instances": body}, headers={"X-Request-ID": "rejected-1"}
        )
        assert refused.status_code == 400
        # Labels.
        self.label_answers.append(
            http.post(
                "/labels",
                json={
                    "labels": [
                        {"key": 1, "label": "yes"},
                        {"key": "c-1", "label": "no", "time": "2026-12-06T10:00:00"},
                        {
                            "key": "c-2",
                            "label": "no",
                            "time": "2026-12-06T10:00:00+02:00",
                            "request_id": "cols-1",
                        },
                        {"key": "", "label": "no"},
                        {"key": 3, "label": [1]},
                        {"key": 4, "label": "yes", "time": "yesterday"},
                        {"key": 5, "label": "yes", "colour": "red"},
                    ]
                },
            )
        )
        as_json = {"Content-Type": "application/json"}
        for body in (b'{"labels": 3}', b"not json"):
            self.label_answers.append(http.post("/labels", content=body, headers=as_json))

    @staticmethod
    def csv(sent: pd.DataFrame) -> bytes:
        table = sent[list(NUMBERS + CATEGORIES)].copy()
        table.insert(0, "id", list(sent.index))
        return table.to_csv(index=False).encode()


@pytest.fixture(scope="module")
def run(customer_model: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("capture")
    grpc_port = free_port()
    # A flush interval longer than the test: what is on disk was written at SIGTERM.
    server = Server(
        MODEL_TAG=customer_model,
        KEYED_CAPTURE_DIR=str(root),
        KEYED_CAPTURE_FLUSH_S="3600",
        KEYED_GRPC_PORT=str(grpc_port),
    )
    done = Run(customer_model, root)
    try:
        done.drive(server, grpc_port)
        assert predictions_of(root).empty  # nothing flushed yet
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()  # SIGTERM
    return done


def test_every_route_captures_one_row_per_instance_answered(run: Run) -> None:
    captured = predictions_of(run.root)
    by_request = captured.groupby("request_id")
    sources = {
        "rows-1": "predict",
        "cols-1": "predict",
        "v2json-1": "v2_http",
        "v2bin-1": "v2_http",
        "grpc-1": "v2_grpc",
        "grpcmeta-1": "v2_grpc",
        "file-1": "predict_file",
    }
    for rid, source in sources.items():
        rows = by_request.get_group(rid)
        assert (rows["source"] == source).all(), rid
        assert sorted(rows["key"]) == sorted(str(key) for key in run.answers[rid]), rid
        assert len(rows) == len(run.sent[rid]), rid
    # The task's rows are there too, under one request id of their own.
    task = captured[captured["key"].str.startswith("t-")]
    assert len(task) == 25 and (task["source"] == "predict_file").all()
    assert task["request_id"].nunique() == 1
    # A request refused whole captured nothing.
    assert not captured["key"].str.startswith("rej-").any()
    assert "rejected-1" not in set(captured["request_id"])
    assert set(captured["model"]) == {run.tag.split(":")[0]}
    assert set(captured["version"]) == {run.tag.split(":")[1]}
    assert set(captured["date"]) == {captured["ts"].dt.strftime("%Y-%m-%d").iloc[0]}


def test_a_captured_row_holds_the_answer_and_the_features_the_model_got(run: Run) -> None:
    captured = predictions_of(run.root)
    for rid, answers in run.answers.items():
        rows = captured[captured["request_id"] == rid].set_index("key")
        sent = run.sent[rid]
        for key, prediction in answers.items():
            row = rows.loc[str(key)]
            assert row["key_type"] == ("int" if type(key) is int else "str")
            if prediction is None:  # refused for its own sake: an error row, no features
                assert row["error"] == "missing_feature" and pd.isna(row["prediction"])
                assert pd.isna(row["feature_plan"])
                continue
            assert row["prediction"] == prediction and pd.isna(row["error"]), (rid, key)
            probabilities = [row[f"probability_{c}"] for c in ("no", "yes")]
            assert sum(probabilities) == pytest.approx(1.0)
            for name in NUMBERS:
                value = sent.loc[key, name]
                assert (pd.isna(value) and pd.isna(row[f"feature_{name}"])) or row[
                    f"feature_{name}"
                ] == value, (rid, key, name)
            for name in CATEGORIES:
                value = sent.loc[key, name]
                if isinstance(value, str):
                    assert row[f"feature_{name}"] == value, (rid, key, name)


def test_a_reader_sees_whole_files_and_the_layouts_metadata(run: Run) -> None:
    import duckdb
    import pyarrow.parquet as pq

    files = sorted((run.root / layout.PREDICTIONS).rglob("*"))
    assert not [path for path in files if path.name.endswith(layout.TEMPORARY_SUFFIX)]
    parquet = [path for path in files if path.suffix == layout.SUFFIX]
    assert parquet
    metadata = pq.read_schema(parquet[0]).metadata
    assert metadata[layout.META_TASK] == b"classification"
    assert orjson.loads(metadata[layout.META_CLASSES]) == ["no", "yes"]
    counted = duckdb.sql(
        f"select count(*), count(distinct version) from read_parquet("
        f"'{layout.glob_of(run.root, layout.PREDICTIONS)}', hive_partitioning = true, "
        "hive_types_autocast = false)"
    ).fetchone()
    assert counted == (len(predictions_of(run.root)), 1)


def test_labels_are_counted_by_outcome_and_kept_on_disk(run: Run) -> None:
    first, not_a_list, not_json = run.label_answers
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["accepted"] == 3
    assert answer["refused"] == {
        "invalid_key": 1,
        "invalid_label": 1,
        "invalid_time": 1,
        "invalid_item": 1,
    }
    assert [(e["index"], e["reason"]) for e in answer["errors"]] == [
        (3, "invalid_key"),
        (4, "invalid_label"),
        (5, "invalid_time"),
        (6, "invalid_item"),
    ]
    assert not_a_list.status_code == 400 and not_json.status_code == 400
    labels = labels_of(run.root).sort_values("key")
    assert labels["key"].tolist() == ["1", "c-1", "c-2"]
    assert labels["key_type"].tolist() == ["int", "str", "str"]
    assert labels["label"].tolist() == ["yes", "no", "no"]
    assert pd.isna(labels["time"].iloc[0])
    assert labels["time"].iloc[1] == pd.Timestamp("2026-12-06T10:00:00Z")  # naive is UTC
    assert labels["time"].iloc[2] == pd.Timestamp("2026-12-06T08:00:00Z")
    assert labels["request_id"].tolist()[2] == "cols-1"
    assert set(labels["model"]) == {run.tag.split(":")[0]}  # the name, not the version


def test_sigkill_loses_at_most_one_flush_interval(customer_model: str, tmp_path: Path) -> None:
    flush_s, margin_s = 1.0, 3.0
    server = Server(
        MODEL_TAG=customer_model,
        KEYED_CAPTURE_DIR=str(tmp_path),
        KEYED_CAPTURE_FLUSH_S=str(flush_s),
    )
    body = instances(make_customer_table(1, seed=1), ["only"])
    answered: list[tuple[str, float]] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            first_file_at = None
            while True:
                rid = f"kill-{len(answered)}"
                answer = http.post(
                    "/predict", json={"instances": body}, headers={"X-Request-ID": rid}
                )
                assert answer.status_code == 200
                answered.append((rid, time.time()))
                if first_file_at is None and any(
                    (tmp_path / layout.PREDICTIONS).rglob("*.parquet")
                ):
                    first_file_at = time.time()
                # Traffic on both sides of the bound: some rows older than it, some newer.
                if (
                    first_file_at is not None
                    and time.time() > first_file_at + flush_s + margin_s + 1
                ):
                    break
        killed_at = time.time()
        server.kill()
    except BaseException:
        server.print_log()
        server.stop()
        raise
    server.stop()
    captured = set(predictions_of(tmp_path)["request_id"])
    old_enough = [rid for rid, at in answered if at < killed_at - flush_s - margin_s]
    assert old_enough
    assert [rid for rid in old_enough if rid not in captured] == []


def test_an_unwritable_directory_keeps_answers_200_and_counts_the_drops(
    customer_model: str, tmp_path: Path
) -> None:
    # Root ignores permissions: a path under a regular file cannot be made by anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = Server(
        MODEL_TAG=customer_model,
        KEYED_CAPTURE_DIR=str(blocker / "capture"),
        KEYED_CAPTURE_FLUSH_S="0.2",
    )
    body = instances(make_customer_table(3, seed=2), ["a", "b", "c"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(20):
                answer = http.post(
                    "/predict", json={"instances": body}, headers={"X-Request-ID": f"u-{i}"}
                )
                assert answer.status_code == 200, answer.text
                assert [p["key"] for p in answer.json()["predictions"]] == ["a", "b", "c"]
            labels = http.post("/labels", json={"labels": [{"key": "a", "label": "yes"}]})
            assert labels.status_code == 503 and "Retry-After" in labels.headers
            deadline = time.monotonic() + 30
            dropped = 0.0
            while dropped < 60 and time.monotonic() < deadline:
                dropped = write_failed(http.get("/metrics").text)
                time.sleep(0.2)  # /metrics has no push; polling it is its protocol
        assert dropped == 60
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_failed(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("keyed_capture_dropped_total{") and 'reason="write_failed"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
