"""Production configuration: the Kubernetes manifests validate offline against the
Kubernetes schemas, and BentoML reads the serving config as intended."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support import ROOT

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
# The oldest Kubernetes still commonly run and the newest the validator ships.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str) -> dict[str, Any]:
    found = [d for path in MANIFESTS for d in documents(path) if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_refuses_a_misspelled_field() -> None:
    deployment = copy.deepcopy(by_kind("Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_deployment_probes_bentomls_health_endpoints_and_asks_for_resources() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 3000
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # The runner drains for up to 28 s after SIGTERM (KEYED_DRAIN_MAX_S).
    assert pod["terminationGracePeriodSeconds"] > 28 + 5


def test_the_autoscaler_and_service_point_at_the_deployment() -> None:
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = by_kind("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert by_kind("Service")["spec"]["selector"].items() <= labels.items()
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )


def test_the_kustomization_applies_every_manifest_and_mounts_the_serving_config() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.relative_to(DEPLOY).as_posix() for p in MANIFESTS
    )
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["bentoml_config.yaml"]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == generated["name"]
    container = pod["containers"][0]
    (mount,) = container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BENTOML_CONFIG"] == f"{mount['mountPath']}/bentoml_config.yaml"


def test_bentoml_reads_the_serving_config_for_both_services(tmp_path: Path) -> None:
    # In a fresh interpreter: BentoML reads BENTOML_CONFIG once, when it is imported.
    script = (
        "import json, bentoml\n"
        "from bentoml._internal.configuration import load_config\n"
        "from bentoml._internal.configuration.containers import BentoMLContainer\n"
        "load_config(use_version=2)\n"
        "services = BentoMLContainer.config.services.get()\n"
        "print(json.dumps({name: services[name] for name in ('KeyedPrediction', 'ModelRunner')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "BENTOML_CONFIG": str(DEPLOY / "bentoml_config.yaml"),
            "BENTOML_HOME": str(tmp_path),
        },
    )
    assert out.returncode == 0, out.stderr[-3000:]
    services = yaml.safe_load(out.stdout.strip().splitlines()[-1])
    written = yaml.safe_load((DEPLOY / "bentoml_config.yaml").read_text())["services"]
    for name, config in written.items():
        for key, value in config.items():
            if isinstance(value, dict):
                assert value.items() <= services[name][key].items(), (name, key)
            else:
                assert services[name][key] == value, (name, key)
