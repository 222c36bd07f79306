from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import bentoml
import httpx
import pytest
import yaml
from support import ROOT, served


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
    assert {"service.py", "keyed_serving/validate.py"} <= packed
    assert not any(name.startswith(("tests/", ".venv/", "bench/")) for name in packed)

    with served(tag, cwd=tmp_path) as url:
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
