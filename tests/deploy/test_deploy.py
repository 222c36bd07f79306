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


# ---- KServe ------------------------------------------------------------------------------

KSERVE = DEPLOY / "kserve" / "inferenceservice.yaml"
KSERVE_GRPC = DEPLOY / "kserve" / "inferenceservice-grpc.yaml"
# KServe's InferenceService CRD schema (v1beta1), vendored: the test data names its source.
KSERVE_SCHEMA = (
    Path(__file__).parent / "data" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
)
# What a custom predictor adds to a PodSpec (KServe's ComponentExtensionSpec).
KSERVE_COMPONENT_FIELDS = {
    "minReplicas", "maxReplicas", "containerConcurrency", "timeout", "scaleTarget",
    "scaleMetric", "scaleMetricType", "canaryTrafficPercent", "logger", "batcher", "labels",
    "annotations", "deploymentStrategy", "autoScaling", "storageUris", "workerSpec",
}  # fmt: skip


def kserve_validator() -> Any:
    """KServe's schema, closed as `kubectl apply --validate=strict` treats it: an object
    with properties takes no other field (unless it preserves unknown fields)."""
    import gzip
    import json

    import jsonschema

    def closed(schema: Any) -> Any:
        if isinstance(schema, list):
            return [closed(item) for item in schema]
        if not isinstance(schema, dict):
            return schema
        schema = {key: closed(value) for key, value in schema.items()}
        if schema.pop("x-kubernetes-int-or-string", False):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema

    with gzip.open(KSERVE_SCHEMA, "rt") as handle:
        schema = closed(json.load(handle)["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("path", [KSERVE, KSERVE_GRPC], ids=["rest", "grpc"])
def test_the_kserve_inference_service_validates_against_kserves_schema(path: Path) -> None:
    (service,) = documents(path)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    validator = kserve_validator()
    errors = [error.message for error in validator.iter_errors(service)]
    assert not errors, errors
    misspelled = copy.deepcopy(service)
    misspelled["spec"]["predictor"]["minReplica"] = 2
    assert list(validator.iter_errors(misspelled)), "the closed schema must refuse a typo"


@pytest.mark.parametrize("path", [KSERVE, KSERVE_GRPC], ids=["rest", "grpc"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kserve_predictor_is_a_valid_kubernetes_pod_spec(version: str, path: Path) -> None:
    (service,) = documents(path)
    predictor = service["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, version, strict=True)


def test_the_kserve_predictor_runs_our_image_and_speaks_v2() -> None:
    (service,) = documents(KSERVE)
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROTOCOL"] == "v2"  # how KServe reads a custom predictor's protocol
    deployment = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == deployment["image"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    (port,) = container["ports"]
    assert port["containerPort"] == container["readinessProbe"]["httpGet"]["port"] == 3000
    (mount,) = container["volumeMounts"]
    assert env["BENTOML_CONFIG"] == f"{mount['mountPath']}/bentoml_config.yaml"


def test_the_manifests_serve_the_model_the_image_carries() -> None:
    # The image's bento carries one model version and serves it with MODEL_TAG unset; a
    # MODEL_TAG for another model would stop every replica at start (service.py).
    deployment = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    (kserve,) = documents(KSERVE)
    (kserve_grpc,) = documents(KSERVE_GRPC)
    predictors = [kserve["spec"]["predictor"], kserve_grpc["spec"]["predictor"]]
    for container in [*deployment, *(c for p in predictors for c in p["containers"])]:
        names = {e["name"] for e in container.get("env", [])}
        assert not names & {"MODEL_TAG", "KEYED_MODEL_TAG"}, container["name"]


def test_grpc_is_served_and_exposed_on_the_port_the_manifests_name() -> None:
    """KEYED_GRPC_PORT starts gRPC beside HTTP: the Deployment's container and Service
    expose that port, and the KServe gRPC predictor names it h2c (HTTP/2 without TLS),
    its one port, as Knative asks."""
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == int(env["KEYED_GRPC_PORT"])
    service_ports = {p["name"]: p for p in by_kind("Service")["spec"]["ports"]}
    assert service_ports["grpc"]["targetPort"] == "grpc"
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    (kserve,) = documents(KSERVE_GRPC)
    (predictor,) = kserve["spec"]["predictor"]["containers"]
    (port,) = predictor["ports"]
    grpc_env = {e["name"]: e.get("value") for e in predictor["env"]}
    assert port["name"] == "h2c" and port["containerPort"] == int(grpc_env["KEYED_GRPC_PORT"])
    assert grpc_env["PROTOCOL"] == "v2"
