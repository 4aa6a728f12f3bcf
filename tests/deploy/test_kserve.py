"""deploy/kserve, offline: cnnviz as the explainer of a KServe InferenceService (issue 28).

The ConfigMap and the explainer's pod (as a Pod) against the Kubernetes schemas (kubernetes-validate,
strict); the InferenceService against a schema written from KServe's v1beta1 reference; and what no
schema sees: the models file parses with the service's own parser and names the model as the
InferenceService (the name KServe puts in ``/v1/models/<name>:explain``), its graph lies where the
storage initializer puts it, the command serves on the port KServe calls, the probes are routes of the
app, and every CNNVIZ_* variable is a setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text()) if d]
SCHEMA = json.loads(Path(__file__).with_name("kserve_inferenceservice.schema.json").read_text())
KSERVE_PORT = 8080  # the port KServe sends a custom container's traffic to


def _doc(kind: str) -> dict:
    (doc,) = [d for d in DOCS if d["kind"] == kind]
    return doc


def _explainer() -> dict:
    (c,) = _doc("InferenceService")["spec"]["explainer"]["containers"]
    return c


def _env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _explainer()["env"]}


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
def test_kubernetes_objects_validate(version: str) -> None:
    cm = _doc("ConfigMap")
    kubernetes_validate.validate(cm, version, strict=True)
    isvc = _doc("InferenceService")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "explainer", "namespace": "cnnviz"},
           "spec": {k: v for k, v in isvc["spec"]["explainer"].items() if k in ("containers", "volumes")}}
    kubernetes_validate.validate(pod, version, strict=True)


def test_inferenceservice_validates() -> None:
    jsonschema.validate(_doc("InferenceService"), SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # the schema refuses what KServe refuses
        jsonschema.validate({**_doc("InferenceService"), "spec": {"explainer": {}}}, SCHEMA)


def test_models_file_names_the_inferenceservice(tmp_path: Path) -> None:
    from cnnviz.models.specs import specs_from_file

    isvc, cm, env = _doc("InferenceService"), _doc("ConfigMap"), _env()
    (mount,) = _explainer()["volumeMounts"]
    (vol,) = isvc["spec"]["explainer"]["volumes"]
    assert vol["name"] == mount["name"] and vol["configMap"]["name"] == cm["metadata"]["name"]
    key = Path(env["CNNVIZ_MODELS"]).relative_to(mount["mountPath"]).as_posix()
    assert key in cm["data"]
    text = cm["data"][key].replace("/mnt/models/labels.txt", str(tmp_path / "labels.txt"))
    (tmp_path / "labels.txt").write_text("daisy\ntulip\n")
    (tmp_path / "models.toml").write_text(text)
    (spec,) = specs_from_file(tmp_path / "models.toml")
    name = isvc["metadata"]["name"]
    assert spec.name == name == env["CNNVIZ_DEFAULT_MODEL"] and spec.arch == "onnx" and spec.source == "onnx"
    assert spec.weights.startswith("/mnt/models/")  # where KServe's storage initializer writes STORAGE_URI
    assert env["STORAGE_URI"] == isvc["spec"]["predictor"]["model"]["storageUri"]  # the predictor's own graph
    assert isvc["metadata"]["namespace"] == cm["metadata"]["namespace"]


def test_command_port_probes_and_settings() -> None:
    from core.settings import Settings

    c = _explainer()
    cmd = c["command"]
    assert cmd[:2] == ["cnnviz", "serve"] and cmd[cmd.index("--port") + 1] == str(KSERVE_PORT)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and c["name"] == "kserve-container"
    assert [p["containerPort"] for p in c["ports"]] == [KSERVE_PORT]
    paths = json.loads((ROOT / "openapi" / "openapi.json").read_text())["paths"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == KSERVE_PORT and c[probe]["httpGet"]["path"] in paths
    assert "/v1/models/{model}:explain" in paths  # the path KServe's ingress sends to the explainer
    settable = {(f.validation_alias.choices[0] if f.validation_alias is not None and hasattr(
        f.validation_alias, "choices") else f"CNNVIZ_{n.upper()}") for n, f in Settings.model_fields.items()}
    for var in _env():
        if var.startswith("CNNVIZ_"):
            assert var in settable, var
