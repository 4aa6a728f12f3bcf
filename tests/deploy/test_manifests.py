"""deploy/kubernetes, offline: every manifest against the Kubernetes schemas (kubernetes-validate, strict),
KEDA's ScaledObjects against a schema written from KEDA's documented spec, and the references between
them that no schema sees (a worker's queue <-> its scaler's Redis list, probes, selectors, settings)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from redis import Redis
from rq import Queue

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = json.loads((Path(__file__).with_name("keda_scaledobject.schema.json")).read_text())
# The oldest Kubernetes still commonly run beside the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
QUEUES = {"short", "long"}  # queues by kind of work (issue 15): one worker Deployment and ScaledObject each
NAMESPACED = {"ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler",
              "PodDisruptionBudget", "ScaledObject"}


def job_config_class() -> type:
    from core.store.config import JobConfig

    return JobConfig


def rq_list_key(kind: str, env: dict[str, str]) -> str:
    """The Redis list rq keeps the waiting job ids of a kind of work in, for a worker with this environment:
    ``rq:queue:<name>``, where the name is JobConfig's queue name of the kind ("<CNNVIZ_QUEUE>-short")."""
    cls = job_config_class()
    cfg = cls(queue=env.get("CNNVIZ_QUEUE", cls.queue))
    name = cfg.queue_name(kind) if hasattr(cfg, "queue_name") else kind
    return Queue(name, connection=Redis()).key  # builds the key only; nothing connects


def _load() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _load()


def _ids(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in docs]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def argv(c: dict[str, Any]) -> list[str]:
    return [str(x) for x in c.get("command", []) + c.get("args", [])]


def worker_queues(deployment: dict[str, Any]) -> list[str]:
    """The queues of ``cnnviz worker --queues a,b`` in a Deployment's container, or [] for a non-worker."""
    cmd = argv(container(deployment))
    if "worker" not in cmd:
        return []
    for i, tok in enumerate(cmd):
        if tok == "--queues":
            return [q for q in cmd[i + 1].split(",") if q]
        if tok.startswith("--queues="):
            return [q for q in tok.split("=", 1)[1].split(",") if q]
    pytest.fail(f"{deployment['metadata']['name']}: a worker must name its queues with --queues")


def workers() -> list[dict[str, Any]]:
    return [d for d in of_kind("Deployment") if worker_queues(d)]


def config_data() -> dict[str, str]:
    return one("ConfigMap", "cnnviz-config")["data"]


def env_of(workload: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it from envFrom ConfigMaps/Secrets and env."""
    c = container(workload)
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(one("ConfigMap", src["configMapRef"]["name"])["data"])
        if "secretRef" in src:
            env.update(one("Secret", src["secretRef"]["name"]).get("stringData", {}))
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


# --- the set of files ----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = kust["resources"]
    assert len(listed) == len(set(listed)), "a resource listed twice"
    on_disk = {p.name for p in K8S_DIR.glob("*.y*ml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk


def test_expected_objects_are_there():
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    assert {("Namespace", "cnnviz"), ("ConfigMap", "cnnviz-config"), ("Secret", "cnnviz-api-keys"),
            ("Deployment", "cnnviz-api"), ("Service", "cnnviz-api"), ("HorizontalPodAutoscaler", "cnnviz-api"),
            ("PodDisruptionBudget", "cnnviz-api"), ("StatefulSet", "redis"), ("Service", "redis")} <= kinds
    assert {q for d in workers() for q in worker_queues(d)} == QUEUES
    config_module = sys.modules[job_config_class().__module__]  # the kinds the code knows, where it has them
    assert set(getattr(config_module, "QUEUES", QUEUES)) == QUEUES
    assert len(of_kind("ScaledObject")) == len(workers())


def test_every_object_in_the_namespace():
    (ns,) = of_kind("Namespace")
    for _, d in DOCS:
        if d["kind"] in NAMESPACED:
            assert d["metadata"].get("namespace") == ns["metadata"]["name"], d["metadata"]["name"]
        else:
            assert d["kind"] == "Namespace"


# --- schemas -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in DOCS if d["kind"] != "ScaledObject"],
                         ids=_ids([x for x in DOCS if x[1]["kind"] != "ScaledObject"]))
def test_kubernetes_schema(doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("doc", of_kind("ScaledObject"), ids=[d["metadata"]["name"] for d in of_kind("ScaledObject")])
def test_scaledobject_schema(doc):
    jsonschema.Draft202012Validator.check_schema(KEDA_SCHEMA)
    jsonschema.Draft202012Validator(KEDA_SCHEMA).validate(doc)
    spec = doc["spec"]
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    if "idleReplicaCount" in spec:
        assert spec["idleReplicaCount"] < spec.get("minReplicaCount", 0)
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:  # KEDA hands it to the HPA it makes: check it with the HPA's own schema
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": f"keda-hpa-{doc['metadata']['name']}"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                           "name": spec["scaleTargetRef"]["name"]},
                        "minReplicas": max(1, spec.get("minReplicaCount", 1)),
                        "maxReplicas": spec.get("maxReplicaCount", 100), "behavior": behavior}}
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(hpa, version, strict=True)


@pytest.mark.parametrize("mutate", [
    lambda s: s["spec"].update(minReplicas=1),                                   # HPA's name, not KEDA's
    lambda s: s["spec"]["triggers"][0]["metadata"].update(listLength=4),          # metadata values are strings
    lambda s: s["spec"]["triggers"][0]["metadata"].pop("listName"),
    lambda s: s["spec"]["triggers"][0]["metadata"].update(queueName="x"),         # not a redis-list field
    lambda s: s["spec"]["triggers"][0]["metadata"].pop("addressFromEnv"),         # no address at all
    lambda s: s["spec"]["triggers"][0]["metadata"].update(address="redis://redis:6379/0"),  # host:port only
    lambda s: s["spec"]["scaleTargetRef"].pop("name"),
    lambda s: s["spec"].update(triggers=[]),
])
def test_scaledobject_schema_rejects_mistakes(mutate):
    bad = copy.deepcopy(of_kind("ScaledObject")[0])
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, KEDA_SCHEMA, cls=jsonschema.Draft202012Validator)


# --- workers and their scalers -------------------------------------------------------------------------


@pytest.mark.parametrize("dep", workers(), ids=[d["metadata"]["name"] for d in workers()])
def test_worker_scaled_on_its_queue_list(dep):
    name = dep["metadata"]["name"]
    targeting = [so for so in of_kind("ScaledObject") if so["spec"]["scaleTargetRef"]["name"] == name]
    assert len(targeting) == 1, f"{name}: one ScaledObject must target it, found {len(targeting)}"
    so = targeting[0]
    ref = so["spec"]["scaleTargetRef"]
    assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1"
    lists = {t["metadata"]["listName"] for t in so["spec"]["triggers"] if t["type"] == "redis"}
    assert lists == {rq_list_key(q, env_of(dep)) for q in worker_queues(dep)}
    # /readyz wants a live worker on every queue: KEDA must never scale a queue's workers to zero.
    assert so["spec"].get("minReplicaCount", 0) >= 1
    assert "replicas" not in dep["spec"], "KEDA owns replicas; a fixed count fights it on every apply"


@pytest.mark.parametrize("dep", workers(), ids=[d["metadata"]["name"] for d in workers()])
def test_scaler_reads_the_redis_the_workers_use(dep):
    (so,) = [s for s in of_kind("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
    env = env_of(dep)
    url = urlsplit(env["REDIS_URL"])
    for trig in so["spec"]["triggers"]:
        meta = trig["metadata"]
        address = env[meta["addressFromEnv"]] if "addressFromEnv" in meta else meta["address"]
        assert address == f"{url.hostname}:{url.port or 6379}"
        assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")
        # KEDA runs in its own namespace: a bare Service name would not resolve there.
        assert "." in url.hostname


@pytest.mark.parametrize("dep", workers(), ids=[d["metadata"]["name"] for d in workers()])
def test_worker_gpu_and_grace(dep):
    c = container(dep)
    assert argv(c)[:2] == ["cnnviz", "worker"]
    assert "--device" in argv(c) and argv(c)[argv(c).index("--device") + 1].startswith("cuda")
    for part in ("requests", "limits"):
        assert str(c["resources"][part]["nvidia.com/gpu"]) == "1", part
    assert "memory" in c["resources"]["requests"] and "memory" in c["resources"]["limits"]
    # SIGTERM lets the running job finish (rq warm shutdown): at least a step and a checkpoint.
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    # A surge pod would wait for a GPU that its predecessor holds.
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_long_queue_grace_is_longer():
    grace = {q: d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
             for d in workers() for q in worker_queues(d)}
    assert grace["long"] >= grace["short"]


# --- the API -------------------------------------------------------------------------------------------


def test_api_probes_and_resources():
    api = one("Deployment", "cnnviz-api")
    c = container(api)
    assert argv(c) == ["cnnviz", "serve"]
    (port,) = c["ports"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in (port["name"], port["containerPort"]), probe
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 120, "model loading needs minutes, not seconds"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]), "the HPA's CPU target is a share of the request"
    assert "memory" in c["resources"]["limits"]
    assert api["spec"]["replicas"] == 2
    assert env_of(api)["CNNVIZ_DEVICE"] == "cpu"
    assert str(env_of(api)["CNNVIZ_PORT"]) == str(port["containerPort"])
    assert env_of(api)["CNNVIZ_HOST"] == "0.0.0.0"


def _selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_their_pods():
    for d in of_kind("Deployment") + of_kind("StatefulSet"):
        assert _selects(d["spec"]["selector"]["matchLabels"], d), d["metadata"]["name"]
    # No two workloads' selectors overlap (a Service or PDB would pick the wrong pods).
    workloads = of_kind("Deployment") + of_kind("StatefulSet")
    for a in workloads:
        for b in workloads:
            if a is not b:
                assert not _selects(a["spec"]["selector"]["matchLabels"], b), (a["metadata"]["name"],
                                                                               b["metadata"]["name"])


def test_api_service_pdb_hpa_point_at_the_api():
    api = one("Deployment", "cnnviz-api")
    svc = one("Service", "cnnviz-api")
    assert _selects(svc["spec"]["selector"], api)
    (port,) = container(api)["ports"]
    assert svc["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    pdb = one("PodDisruptionBudget", "cnnviz-api")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], api)
    assert pdb["spec"]["minAvailable"] < api["spec"]["replicas"], "a PDB as large as the replicas blocks drains"
    hpa = one("HorizontalPodAutoscaler", "cnnviz-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cnnviz-api"}
    assert hpa["spec"]["minReplicas"] >= api["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # Nothing but the HPA scales the API, and nothing but KEDA the workers.
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in of_kind("ScaledObject")}
    assert "cnnviz-api" not in scaled


# --- Redis ---------------------------------------------------------------------------------------------


def _redis_flags(sts: dict[str, Any]) -> dict[str, str]:
    cmd = argv(container(sts))
    cmd = cmd[cmd.index("redis-server") + 1:]
    return {cmd[i].lstrip("-"): cmd[i + 1] for i in range(0, len(cmd) - 1) if cmd[i].startswith("--")}


def test_redis_statefulset_durable():
    sts = one("StatefulSet", "redis")
    flags = _redis_flags(sts)
    assert flags["appendonly"] == "yes"
    assert flags["appendfsync"] == "everysec"
    assert flags["maxmemory-policy"] == "noeviction"
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data", "the AOF lives in /data"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "PONG" in " ".join(container(sts)[probe]["exec"]["command"]), probe  # LOADING is not ready


def test_redis_headless_service_and_url():
    sts = one("StatefulSet", "redis")
    svc = one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert _selects(svc["spec"]["selector"], sts)
    url = urlsplit(config_data()["REDIS_URL"])
    assert url.scheme in ("redis", "rediss")
    assert url.hostname.split(".")[:2] == [svc["metadata"]["name"], svc["metadata"]["namespace"]]
    assert url.port == svc["spec"]["ports"][0]["port"]


# --- settings ------------------------------------------------------------------------------------------


def _known_env_names() -> set[str]:
    """The names the code reads: every variable of the one settings model (core/settings.py), plus
    REDIS_ADDRESS (read by KEDA, not by cnnviz) and OMP_NUM_THREADS (the OpenMP runtime's own)."""
    from core.settings import Settings, env_names

    names = {"REDIS_ADDRESS", "OMP_NUM_THREADS"}
    for field in Settings.model_fields:
        names.update(env_names(field))
    return names


def test_settings_are_names_the_code_reads_and_parse(monkeypatch):
    known = _known_env_names()
    env: dict[str, str] = {}
    for d in of_kind("Deployment"):
        env.update(env_of(d))
    unknown = sorted(set(env) - known)
    assert not unknown, f"settings nothing reads (typo?): {unknown}"
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    from core.settings import Settings

    s = Settings()
    assert s.redis_url == config_data()["REDIS_URL"]
    assert s.api_keys and all(isinstance(k, str) and k for k in s.api_keys)
    cfg = s.job_config
    assert cfg.prefix == env.get("CNNVIZ_KEY_PREFIX", cfg.prefix)


def test_api_keys_secret_is_a_json_list_read_by_the_api_only():
    secret = one("Secret", "cnnviz-api-keys")
    keys = json.loads(secret["stringData"]["CNNVIZ_API_KEYS"])
    assert isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)
    assert "CNNVIZ_API_KEYS" in env_of(one("Deployment", "cnnviz-api"))
    for w in workers():
        assert "CNNVIZ_API_KEYS" not in env_of(w)


# --- kustomize, where kubectl is installed -------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_same_objects():
    out = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    assert built == {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
