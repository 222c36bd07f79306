"""A table a model was trained on is scorable as it is: booleans, text a CSV reader would
take for missing ("NA" as a region code), decimals; through the client and /predict_file."""

from __future__ import annotations

import decimal
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import ROOT, own_predictions, served

from keyed_serving.client.keyed_client import KeyedClient
from keyed_serving.tables import read_table

pytestmark = pytest.mark.slow


def members(rows: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    member = rng.random(rows) < 0.5
    region = rng.choice(["NA", "EU", "APAC"], rows)  # NA: North America, not a gap
    spend = np.round(rng.gamma(2.0, 30.0, rows), 2)
    score = member * 1.0 + (region == "NA") * 0.8 - spend / 60 + rng.normal(0, 0.5, rows)
    return pd.DataFrame(
        {
            "member_id": np.arange(rows) + 10**12,
            "member": member,
            "region": region,
            "spend": spend,
            "renewed": np.where(score > 0, "yes", "no"),
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A model trained through train.py on a CSV, and that CSV."""
    path = tmp_path_factory.mktemp("members") / "members.csv"
    members(800).to_csv(path, index=False)
    command = [sys.executable, "train.py", "--csv", str(path), "--target", "renewed"]
    out = subprocess.run(
        [*command, "--key", "member_id", "--name", "members"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    yield out.stdout.split()[1], path


def test_training_reads_na_as_a_category_and_booleans_as_true_and_false(
    trained: tuple[str, Path],
) -> None:
    tag, _ = trained
    features = {f["name"]: f for f in bentoml.models.get(tag).info.metadata["features"]}
    assert features["region"]["categories"] == ["APAC", "EU", "NA"]
    assert features["member"]["categories"] == ["False", "True"]
    assert features["spend"]["type"] == "number"


def test_the_training_table_is_scored_as_it_is_by_the_client_and_predict_file(
    trained: tuple[str, Path], tmp_path: Path
) -> None:
    tag, path = trained
    table = read_table(path, "member_id").drop(columns=["renewed"])
    # The same table as a database export would give it: booleans and decimals in Parquet.
    parquet = tmp_path / "members.parquet"
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    spend = pa.array([decimal.Decimal(str(v)) for v in table["spend"]], pa.decimal128(8, 2))
    arrow = arrow.set_column(arrow.schema.get_field_index("spend"), "spend", spend)
    pq.write_table(arrow, parquet)
    expected = own_predictions(tag, table)
    with served(MODEL_TAG=tag) as url:
        client = KeyedClient([url])
        scored = client.score(table, "member_id")  # raised ScoringError (wrong_type) before
        assert scored["prediction"].tolist() == expected
        from_parquet = client.score(read_table(parquet, "member_id"), "member_id")
        assert from_parquet["member_id"].tolist() == table["member_id"].tolist()
        assert from_parquet["prediction"].tolist() == expected
        for name, content in (("m.csv", path.read_bytes()), ("m.parquet", parquet.read_bytes())):
            answer = httpx.post(
                f"{url}/predict_file",
                files={"file": (name, content)},
                data={"key": "member_id"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-failed"] == "0", answer.content[:500]
            body = io.BytesIO(answer.content)
            back = pd.read_csv(body) if name.endswith(".csv") else pd.read_parquet(body)
            assert back["prediction"].tolist() == expected
