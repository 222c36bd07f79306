"""One model version per server: `latest` is resolved once where a server starts, every
worker serves that version, and a prediction never goes out under another version's name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import joblib
import pytest

from keyed_serving.model.store import (
    MODEL_FILE,
    PIN_VARIABLE,
    ModelNotServable,
    check_servable,
    served_model_tag,
)


def save_version(source: str, name: str, relabel: dict[str, str] | None = None) -> str:
    """A new version of ``name`` holding ``source``'s pipeline; with ``relabel`` its class
    labels renamed, so that its predictions cannot pass for another version's. Its tag."""
    stored = bentoml.models.get(source)
    pipeline = joblib.load(stored.path_of(MODEL_FILE))
    metadata = dict(stored.info.metadata)
    if relabel:
        final = pipeline.steps[-1][1]
        final.classes_ = final.classes_.astype(object)
        final.classes_[:] = [relabel[label] for label in final.classes_]
        metadata["classes"] = [relabel[label] for label in metadata["classes"]]
    with bentoml.models.create(name, metadata=metadata) as ref:
        joblib.dump(pipeline, ref.path_of(MODEL_FILE))
    return str(ref.tag)


@pytest.fixture
def as_worker() -> Iterator[None]:
    """This process taken for a worker of `bentoml serve`, as BentoML marks one."""
    from bentoml._internal.context import server_context

    server_context.worker_index = 1
    yield
    server_context.worker_index = None


@pytest.fixture(autouse=True)
def own_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIN_VARIABLE, raising=False)


def test_latest_is_resolved_to_a_version_and_handed_down_in_the_environment(
    default_model: str,
) -> None:
    first = save_version(default_model, "pinned_a")
    assert served_model_tag("pinned_a:latest") == first
    assert json.loads(os.environ[PIN_VARIABLE]) == {"requested": "pinned_a:latest", "tag": first}


def test_a_worker_serves_the_version_its_server_resolved_after_a_new_one_is_saved(
    default_model: str, as_worker: Any
) -> None:
    first = save_version(default_model, "pinned_b")
    os.environ[PIN_VARIABLE] = json.dumps({"requested": "pinned_b:latest", "tag": first})
    save_version(default_model, "pinned_b")
    assert served_model_tag("pinned_b:latest") == first


def test_a_new_start_resolves_latest_afresh(default_model: str) -> None:
    first = save_version(default_model, "pinned_c")
    assert served_model_tag("pinned_c:latest") == first
    second = save_version(default_model, "pinned_c")
    assert served_model_tag("pinned_c:latest") == second  # not a worker: its own start


def test_a_worker_ignores_a_pin_made_for_another_model(default_model: str, as_worker: Any) -> None:
    tag = save_version(default_model, "pinned_d")
    os.environ[PIN_VARIABLE] = json.dumps({"requested": "other:latest", "tag": "other:v1"})
    assert served_model_tag("pinned_d:latest") == tag


def test_a_model_not_in_the_store_is_left_as_asked_and_no_pin_is_handed_down() -> None:
    os.environ[PIN_VARIABLE] = json.dumps({"requested": "nowhere:latest", "tag": "nowhere:v1"})
    assert served_model_tag("nowhere:latest") == "nowhere:latest"
    assert PIN_VARIABLE not in os.environ


IRIS_RELABELLED = {
    "setosa": "v2-setosa",
    "versicolor": "v2-versicolor",
    "virginica": "v2-virginica",
}
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def flowers(n: int, seed: int) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    return [
        {"key": f"f{seed}-{i}", "features": {f: round(rng.uniform(0.5, 7.5), 1) for f in FEATURES}}
        for i in range(n)
    ]


def poll(condition: Any, seconds: float) -> Any:
    """``condition()``'s first true value within ``seconds``, else None."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # a process being respawned: nothing to wait on but the clock
    return None


@pytest.mark.slow
def test_a_runner_restarted_after_a_new_version_was_saved_serves_the_servers_version(
    default_model: str, bentoml_home: str
) -> None:
    import shutil
    from pathlib import Path

    import httpx
    from support import Server, own_predictions

    served = save_version(default_model, "restarted_iris")
    server = Server(MODEL_TAG="restarted_iris:latest")
    try:
        # A new version, its labels renamed, saved while the server runs (into its store).
        newer = save_version(default_model, "restarted_iris", relabel=IRIS_RELABELLED)
        shutil.copytree(
            Path(bentoml_home) / "models" / "restarted_iris",
            server.home / "models" / "restarted_iris",
            dirs_exist_ok=True,
        )
        assert newer != served
        requests = [flowers(12, seed) for seed in range(6)]
        expected = [own_predictions(served, instances) for instances in requests]
        classes = {"setosa", "versicolor", "virginica"}
        answers: list[dict[str, Any]] = []

        def ask(turn: int) -> httpx.Response:
            instances = requests[turn % len(requests)]
            response = httpx.post(
                f"{server.url}/predict", json={"instances": instances}, timeout=60
            )
            if response.status_code != 200:
                assert response.status_code == 503 and "retry-after" in response.headers
                return response
            answer = response.json()
            answers.append(answer)
            assert answer["model"] == served
            got = [(p["key"], p["prediction"]) for p in answer["predictions"]]
            assert {prediction for _, prediction in got} <= classes, got
            assert got == [
                (i["key"], e)
                for i, e in zip(instances, expected[turn % len(requests)], strict=True)
            ]
            return response

        assert ask(0).status_code == 200
        old_runner = server.worker("ModelRunner")
        old_runner.kill()

        def new_runner() -> Any:
            try:
                runner = server.worker("ModelRunner")
            except LookupError:
                return None
            return runner if runner.pid != old_runner.pid else None

        assert poll(new_runner, 60), "the runner was not started again"
        turn = iter(range(1, 10_000))
        assert poll(lambda: ask(next(turn)).status_code == 200, 60), "not answering again"
        for _ in range(40):  # and from then on, every answer right
            assert ask(next(turn)).status_code == 200
    except BaseException:
        server.print_log()
        raise
    finally:
        server.stop()


def a_bento_carrying(tag: str, where: Path) -> Path:
    """The code directory of a bento that carries ``tag``, as `bentoml build` lays one out
    (``<bento>/src`` beside ``<bento>/bento.yaml``); only the description matters here."""
    import yaml

    (where / "src").mkdir(parents=True)
    described = {
        "service": "service:KeyedPrediction",
        "models": [],
        "services": [
            {"name": "KeyedPrediction", "models": [{"tag": tag, "module": ""}]},
            {"name": "ModelRunner", "models": [{"tag": tag, "module": ""}]},
        ],
    }
    (where / "bento.yaml").write_text(yaml.safe_dump(described))
    return where / "src"


def test_a_bento_serves_the_model_it_carries_when_model_tag_is_unset(
    default_model: str, tmp_path: Path
) -> None:
    carried = save_version(default_model, "carried_a")
    source = a_bento_carrying(carried, tmp_path / "bento")
    assert served_model_tag(None, source=source) == carried


def test_a_bento_serves_its_own_version_of_the_model_model_tag_names(
    default_model: str, tmp_path: Path
) -> None:
    carried = save_version(default_model, "carried_b")
    save_version(default_model, "carried_b")  # newer, in this store only
    source = a_bento_carrying(carried, tmp_path / "bento")
    assert served_model_tag("carried_b:latest", source=source) == carried
    assert served_model_tag("carried_b", source=source) == carried
    assert served_model_tag(carried, source=source) == carried


def test_a_bento_refuses_a_model_tag_it_does_not_carry(default_model: str, tmp_path: Path) -> None:
    carried = save_version(default_model, "carried_c")
    other = save_version(default_model, "carried_c")
    source = a_bento_carrying(carried, tmp_path / "bento")
    for requested in (default_model, other, "iris_classifier:latest"):
        with pytest.raises(ModelNotServable, match=f"MODEL_TAG={requested} .* carries {carried}"):
            served_model_tag(requested, source=source)


def test_a_checkout_serves_model_tag_or_else_the_default_model(default_model: str) -> None:
    from support import ROOT

    latest_default = str(bentoml.models.get("iris_classifier:latest").tag)
    assert served_model_tag(None, source=ROOT) == latest_default
    tag = save_version(default_model, "checkout_a")
    assert served_model_tag(tag, source=ROOT) == tag


def test_a_model_not_in_the_store_is_refused_as_a_bentoml_error_naming_it() -> None:
    from bentoml.exceptions import BentoMLException

    with pytest.raises(BentoMLException, match="nowhere_at_all:latest is not in the model store"):
        check_servable("nowhere_at_all:latest")
