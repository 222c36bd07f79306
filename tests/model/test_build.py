from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import bentoml
import httpx
import pytest
import sklearn
import yaml
from support import ROOT, build_bento, free_port, served


def test_the_bento_asks_for_the_same_packages_as_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    assert sorted(bentofile) == sorted(project)


@pytest.mark.slow
def test_bentoml_build_carries_the_model_and_the_bento_serves_keys(
    default_model: str, tmp_path: Path
) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "build", ".", "--output", "tag"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MODEL_TAG": default_model},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.get(tag)
    assert default_model in [str(m.tag) for m in bento.info.all_models]
    source = Path(bento.path) / "src"
    packed = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    assert {"service.py", "keyed_serving/serving/validate.py"} <= packed
    # The gRPC stubs, generated at install time and kept out of git, are in the bento.
    assert {
        "keyed_serving/serving/proto/open_inference_grpc_pb2.py",
        "keyed_serving/serving/proto/open_inference_grpc_pb2_grpc.py",
    } <= packed
    assert not any(name.startswith(("tests/", ".venv/", "bench/")) for name in packed)

    grpc_port = free_port()
    with served(tag, cwd=tmp_path, KEYED_GRPC_PORT=str(grpc_port)) as url:
        import numpy as np
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        name = default_model.split(":")[0]
        inputs = [triton_grpc.InferInput("key", [1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([b"g-1"], dtype=object))
        for feature in ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"):
            inputs.append(triton_grpc.InferInput(feature, [1], "FP64"))
            inputs[-1].set_data_from_numpy(np.array([2.0]))
        assert client.infer(name, inputs).as_numpy("key").tolist() == [b"g-1"]
        response = httpx.post(
            f"{url}/predict",
            timeout=30,
            json={
                "instances": [
                    {
                        "key": "b-1",
                        "features": {
                            "sepal_length_cm": 6.7,
                            "sepal_width_cm": 3.0,
                            "petal_length_cm": 5.2,
                            "petal_width_cm": 2.3,
                        },
                    }
                ]
            },
        )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["key"] == "b-1"


def test_the_bentofile_of_a_model_pins_the_packages_it_was_pickled_with() -> None:
    from types import SimpleNamespace

    from keyed_serving.model.bento import bentofile_for

    stored = SimpleNamespace(
        info=SimpleNamespace(
            metadata={"packages": {"scikit-learn": "1.9.1", "lightgbm": "4.7.0", "numpy": "2.4.6"}}
        )
    )
    base = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    packages = bentofile_for(stored, base)["python"]["packages"]
    assert "scikit-learn==1.9.*" in packages
    assert "lightgbm==4.7.*" in packages
    assert not any(p.startswith("scikit-learn>") for p in packages)
    assert "numpy>=2.0,<2.5" in packages  # numpy pickles are portable: the project's range
    assert len(packages) == len(base["python"]["packages"]) + 1


@pytest.mark.slow
def test_make_build_puts_the_packages_of_a_lightgbm_model_into_the_bento(tmp_path: Path) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    import numpy as np
    import pandas as pd

    import keyed_serving

    frame = pd.DataFrame({"x": np.arange(40.0), "z": np.arange(40.0) % 3})
    model = lightgbm.LGBMRegressor(n_estimators=5, min_child_samples=2, verbose=-1)
    tag = keyed_serving.save_model("build_lgbm", model.fit(frame, frame["x"] * 2), frame)
    bento = bentoml.get(build_bento(tag, tmp_path))
    assert tag in [str(m.tag) for m in bento.info.all_models]
    major_minor = ".".join(lightgbm.__version__.split(".")[:2])
    asked = (Path(bento.path) / "env" / "python" / "requirements.in").read_text().splitlines()
    assert f"lightgbm=={major_minor}.*" in asked
    assert f"scikit-learn=={'.'.join(sklearn.__version__.split('.')[:2])}.*" in asked
