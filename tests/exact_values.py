"""Models and tables for the tests of exact values (issue 20 items 2, 3, 6): a model of zip
codes as text, a model of a datetime column, and the server's validate and model stages
in-process."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder
from sklearn.tree import DecisionTreeClassifier

from keyed_serving.client.keyed_client import KeyedClient
from keyed_serving.model.importing import save_model
from keyed_serving.model.predicting import model_error
from keyed_serving.model.store import load_stored, spec_of
from keyed_serving.serving.answers import keyed_answer
from keyed_serving.serving.reassemble import Scored
from keyed_serving.serving.validate import ValidBatch, read_json, validate_request

ZIPS = ["00501", "02134", "10001", "94105"]


def zip_table(rows: int, seed: int) -> pd.DataFrame:
    """Zip codes as text (leading zeros), one of them missing, and a number."""
    rng = np.random.default_rng(seed)
    zips = rng.choice(ZIPS, rows).astype(object)
    zips[3] = None
    frame = pd.DataFrame(
        {
            "id": [f"c-{i:05d}" for i in range(rows)],
            "zip": zips,
            "amount": np.round(rng.normal(50, 10, rows), 2),
        }
    )
    east = np.isin(zips, ["00501", "02134", "10001"])
    frame["region"] = np.where(east ^ (rng.random(rows) < 0.1), "east", "west")
    return frame


def visit_table(rows: int, seed: int, zone: str | None = None) -> pd.DataFrame:
    """A datetime64[ns] column (in ``zone``, if given) the model really uses (as nanoseconds
    since the epoch)."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-01-01T00:00:00", "ns")
    minutes = rng.integers(0, 60 * 24 * 90, rows).astype("timedelta64[m]")
    when = pd.Series(start + minutes, dtype="datetime64[ns]")
    if zone is not None:
        when = when.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dropna()
        when = when.reset_index(drop=True)
        rows = len(when)
    frame = pd.DataFrame({"id": [f"v-{i:05d}" for i in range(rows)], "when": when})
    frame["shift"] = np.where(when.dt.hour < 12, "morning", "afternoon")
    return frame


class ModelServer:
    """The server's validate and model stages in-process, answering /model_info and
    /predict as the service does; counts the /predict requests it saw."""

    def __init__(self, tag: str) -> None:
        import bentoml

        stored = bentoml.models.get(tag)
        self.spec = spec_of(stored)
        self.model = load_stored(stored)
        self.requests = 0

    def predicted(self, batch: ValidBatch) -> Scored:
        predicted = self.model.predict_columns(
            dict(zip(self.spec.feature_names, batch.columns, strict=True))
        )
        predictions = predicted.predictions.tolist()
        for row in predicted.errors:
            predictions[row] = None
        errors = {row: model_error(batch.keys[row], r) for row, r in predicted.errors.items()}
        return Scored(predictions, predicted.probabilities, errors)

    async def predict_batch(self, batch: ValidBatch) -> Scored:
        return self.predicted(batch)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model_info":
            return httpx.Response(200, json=self.spec.info(100_000).model_dump(mode="json"))
        self.requests += 1
        batch = validate_request(read_json(request.content), self.spec, 100_000)
        return httpx.Response(
            200, content=keyed_answer(batch, self.predicted(batch), self.spec).body
        )

    def client(self) -> KeyedClient:
        return KeyedClient("http://model", transport=httpx.MockTransport(self.handle))


def import_zip_model(folder: Path) -> tuple[str, Any]:
    """Imported from a Parquet sample whose zip column is text; (tag, fitted pipeline)."""
    table = zip_table(600, seed=1)
    encode = ColumnTransformer(
        [("zip", OneHotEncoder(handle_unknown="ignore"), ["zip"])], remainder="passthrough"
    )
    pipeline = make_pipeline(encode, LogisticRegression(max_iter=1000))
    pipeline.fit(table[["zip", "amount"]], table["region"])
    sample = folder / "zips.parquet"
    table.to_parquet(sample)
    return save_model("zips", pipeline, sample, key="id", target="region"), pipeline


def import_visit_model(folder: Path, zone: str | None = None) -> tuple[str, Any]:
    """A pipeline fitted on a datetime64[ns] column (in ``zone``), imported from a Parquet
    sample."""
    table = visit_table(400, seed=2, zone=zone)
    as_numbers = FunctionTransformer(operator.methodcaller("astype", "int64"))
    pipeline = make_pipeline(
        ColumnTransformer([("when", as_numbers, ["when"])]),
        DecisionTreeClassifier(random_state=0),
    )
    pipeline.fit(table[["when"]], table["shift"])
    sample = folder / f"visits-{(zone or 'naive').replace('/', '-')}.parquet"
    table.to_parquet(sample)
    return save_model("visits", pipeline, sample, key="id", target="shift"), pipeline
