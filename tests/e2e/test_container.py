"""The container path: the build context and Dockerfile `bentoml containerize` makes, the
bento served as its container serves it, and (opt-in, KEYED_CONTAINER_TESTS=1) the image
built with buildah and run, probed and asked for keys from inside.

The image build downloads Debian packages and the project's wheels and takes minutes, so CI
does not run it; `make test-container` does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import httpx
import psutil
import pytest
from support import ROOT, build_bento, free_port, own_predictions, served

DEPLOY = ROOT / "deploy"
INSTANCES = [
    {
        "key": "c-001",
        "features": {
            "sepal_length_cm": 5.1,
            "sepal_width_cm": 3.5,
            "petal_length_cm": 1.4,
            "petal_width_cm": 0.2,
        },
    },
    {
        "key": 42,
        "features": {
            "sepal_length_cm": 6.7,
            "sepal_width_cm": 3.0,
            "petal_length_cm": 5.2,
            "petal_width_cm": 2.3,
        },
    },
]


@pytest.fixture(scope="module")
def carried_model(default_model: str) -> str:
    """A model that is not the default (a copy of it under another name): an image that
    served the default instead of the model its bento carries would be caught. Its tag."""
    import joblib

    from keyed_serving.model.store import MODEL_FILE

    stored = bentoml.models.get(default_model)
    with bentoml.models.create("container_iris", metadata=stored.info.metadata) as ref:
        joblib.dump(joblib.load(stored.path_of(MODEL_FILE)), ref.path_of(MODEL_FILE))
    return str(ref.tag)


@pytest.fixture(scope="module")
def bento_tag(carried_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Built as `make container` builds it (`make build MODEL_TAG=container_iris:latest`)."""
    return build_bento("container_iris:latest", tmp_path_factory.mktemp("build"))


def check_keyed_answer(answer: dict[str, Any], model: str) -> None:
    assert answer["model"] == model  # the model the bento carries, with no MODEL_TAG set
    assert [p["key"] for p in answer["predictions"]] == ["c-001", 42]
    assert [p["prediction"] for p in answer["predictions"]] == own_predictions(model, INSTANCES)


@pytest.mark.slow
def test_containerize_builds_from_a_context_holding_the_bento_and_its_model(
    bento_tag: str, carried_model: str
) -> None:
    from bentoml._internal.container import construct_containerfile

    # What `bentoml containerize --backend buildah` hands the builder (no BuildKit).
    with construct_containerfile(bentoml.get(bento_tag), enable_buildkit=False) as (
        context,
        dockerfile_path,
    ):
        dockerfile = Path(dockerfile_path).read_text()
        name, version = carried_model.split(":")
        assert (Path(context) / "models" / name / version / "model.joblib").is_file()
        packed = {
            p.relative_to(context).as_posix() for p in Path(context).rglob("*") if p.is_file()
        }
        requirements = (Path(context) / "env/python/requirements.txt").read_text()

    assert "FROM python:3.11-slim AS base-container" in dockerfile
    assert "ENV BENTOML_CONTAINERIZED=true" in dockerfile
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert "USER bentoml" in dockerfile
    assert "EXPOSE 3000" in dockerfile
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in dockerfile
    # Locked at build time to exact versions: the image predicts with the scikit-learn the
    # model was trained and tested with.
    pins = dict(
        line.split("==", 1)
        for line in requirements.splitlines()
        if line and not line.startswith(("-", "#"))
    )
    for package in ("bentoml", "scikit-learn", "pandas", "numpy", "pyarrow"):
        assert pins[package] == importlib.metadata.version(package)
    assert "pyspark" not in pins  # an extra for offline scoring, not for serving
    assert {"src/service.py", "src/keyed_serving/serving/validate.py"} <= packed
    assert not any(
        part in {"tests", ".venv", "bench", "deploy", ".git", "__pycache__"}
        for name in packed
        for part in name.split("/")
    )
    assert not any(name.endswith((".csv", ".parquet", ".jsonl")) for name in packed)


@pytest.mark.slow
def test_the_bento_serves_keys_as_in_its_container_with_the_production_config(
    bento_tag: str, carried_model: str, tmp_path: Path
) -> None:
    with served(
        bento_tag,
        cwd=tmp_path,
        BENTOML_CONTAINERIZED="true",
        BENTOML_CONFIG=str(DEPLOY / "bentoml_config.yaml"),
    ) as url:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        live = httpx.get(f"{url}/livez", timeout=10)
        response = httpx.post(f"{url}/predict", json={"instances": INSTANCES}, timeout=30)
    assert ready.status_code == 200
    assert live.status_code == 200
    assert response.status_code == 200
    check_keyed_answer(response.json(), carried_model)


# --- opt-in: the real image, built with buildah and run ----------------------------------

container = pytest.mark.skipif(
    os.environ.get("KEYED_CONTAINER_TESTS") != "1" or shutil.which("buildah") is None,
    reason="builds a container image (minutes); set KEYED_CONTAINER_TESTS=1 (make test-container)",
)
BUILDAH_ENV = {"BUILDAH_ISOLATION": "chroot"}


def buildah(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        ["buildah", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **BUILDAH_ENV},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def image(bento_tag: str) -> Iterator[str]:
    """The bento containerized as `make container` does; removed afterwards (1.5 GB each)."""
    subprocess.run(
        [str(DEPLOY / "container" / "base_image.sh")],
        check=True,
        timeout=1800,
        env={**os.environ, **BUILDAH_ENV},
    )
    name = "keyed-prediction:" + bento_tag.split(":")[1]
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "bentoml"),
            "containerize",
            bento_tag,
            "--backend",
            "buildah",
            "-t",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, **BUILDAH_ENV},
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    yield name
    buildah("rmi", name)


@pytest.fixture
def running_container(image: str) -> Iterator[tuple[str, str]]:
    """The image's own entrypoint serving on a free loopback port (host network); the
    working container's name and the URL."""
    working = buildah("from", image).strip()
    # The production config, where the Deployment mounts it.
    buildah(
        "copy",
        "--chown",
        "1034:1034",
        working,
        str(DEPLOY / "bentoml_config.yaml"),
        "/home/bentoml/bento/bentoml_config.yaml",
    )
    port = free_port()
    log = open(Path(os.environ["BENTOML_HOME"]) / f"container-{port}.log", "w+b")  # noqa: SIM115
    process = subprocess.Popen(
        [
            "buildah",
            "run",
            "--network",
            "host",
            "--env",
            f"PORT={port}",
            "--env",
            "BENTOML_CONFIG=/home/bentoml/bento/bentoml_config.yaml",
            working,
            "--",
            "/home/bentoml/bento/env/docker/entrypoint.sh",
        ],
        env={**os.environ, **BUILDAH_ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield working, f"http://127.0.0.1:{port}"
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-6000:])
        raise
    finally:
        stop_container(process)
        log.close()
        buildah("rm", working)


def stop_container(process: subprocess.Popen[bytes]) -> None:
    # SIGTERM to `buildah run` does not reach the server inside, and BentoML's workers run in
    # sessions of their own: stop the server itself, then collect whatever is left.
    family = psutil.Process(process.pid).children(recursive=True)
    for child in family:
        if "bentoml serve" in " ".join(child.cmdline()):
            child.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=10)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)


INSIDE = """
import json, sys, time, urllib.request
url, body = sys.argv[1], sys.argv[2].encode()
deadline = time.monotonic() + 120
while True:
    try:
        ready = urllib.request.urlopen(url + "/readyz", timeout=2).status
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
request = urllib.request.Request(url + "/predict", body, {"content-type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as response:
    print(json.dumps({"ready": ready, "status": response.status,
                      "answer": json.loads(response.read())}))
"""


@container
@pytest.mark.slow
def test_the_image_answers_readyz_and_keyed_predictions_from_inside(
    running_container: tuple[str, str], carried_model: str
) -> None:
    working, url = running_container
    # A second process in the same container (shared loopback): the probe's and a
    # sidecar's view, not the host's.
    out = buildah(
        "run",
        "--network",
        "host",
        working,
        "--",
        "/app/.venv/bin/python",
        "-c",
        INSIDE,
        url,
        json.dumps({"instances": INSTANCES}),
        timeout=180,
    )
    inside = json.loads(out.strip().splitlines()[-1])
    assert inside["ready"] == 200
    assert inside["status"] == 200
    check_keyed_answer(inside["answer"], carried_model)
    # ...and the host reaches it too, as a port mapping would.
    response = httpx.post(f"{url}/predict", json={"instances": INSTANCES}, timeout=30)
    assert response.status_code == 200
    check_keyed_answer(response.json(), carried_model)
