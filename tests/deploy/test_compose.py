"""docker-compose.yml and its CPU override: they parse, Redis is durable (AOF on a named volume,
noeviction, a healthcheck), and the `short` and `long` queues each have a worker service.
`docker compose config` runs too where the compose plugin is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ("short", "long")


class Tagged:
    """A compose merge tag (``!reset``, ``!override``) and the value under it."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(loader: ComposeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.SequenceNode):
        value: Any = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(node.tag, value)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _tagged)


def load(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)  # a SafeLoader subclass


BASE = load("docker-compose.yml")
CPU = load("docker-compose.cpu.yml")


def flags(command: list[str]) -> dict[str, str]:
    return {command[i].lstrip("-"): command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}


def workers(doc: dict[str, Any]) -> dict[str, str]:
    """Service name -> the queues its `cnnviz worker --queues ...` serves."""
    out = {}
    for name, svc in doc["services"].items():
        cmd = [str(x) for x in svc.get("command", [])]
        if cmd[:1] == ["worker"]:
            out[name] = flags(cmd).get("queues", "")
    return out


def test_redis_durable_on_a_named_volume():
    redis = BASE["services"]["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    f = flags(cmd)
    assert f["appendonly"] == "yes"
    assert f["appendfsync"] == "everysec"
    assert f["maxmemory-policy"] == "noeviction"
    (mount,) = redis["volumes"]
    volume, _, path = mount.partition(":")
    assert path == "/data"
    assert "/" not in volume and volume in BASE["volumes"], "a named volume, declared at the top level"
    assert redis["healthcheck"]["test"]
    assert redis["restart"] == "unless-stopped"


def test_one_worker_service_per_queue():
    served = workers(BASE)
    assert sorted(served.values()) == sorted(QUEUES)
    for name in served:
        svc = BASE["services"][name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert int(str(svc["stop_grace_period"]).rstrip("s")) >= 60, "SIGTERM lets the running job finish"
        assert svc["restart"] == "unless-stopped"
    (long_name,) = [n for n, q in served.items() if q == "long"]
    devices = BASE["services"][long_name]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)


def test_api_service():
    api = BASE["services"]["api"]
    assert api["command"] == ["serve"]
    assert "8000:8000" in api["ports"]
    assert api["environment"]["REDIS_URL"] == BASE["services"][next(iter(workers(BASE)))]["environment"]["REDIS_URL"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_cpu_override_covers_every_gpu_service():
    base_gpu = {n for n, s in BASE["services"].items()
                if s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")}
    assert set(CPU["services"]) <= set(BASE["services"])
    assert base_gpu <= set(CPU["services"]), "a GPU reservation left on a CPU-only host fails to start"
    for svc in CPU["services"].values():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert isinstance(devices, Tagged) and devices.tag == "!reset"
        assert flags(svc["command"])["device"] == "cpu"
        assert svc["build"]["args"]["BASE_IMAGE"].startswith("python:")
    assert workers(CPU) == workers(BASE), "the override serves the same queues"


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="docker compose not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_docker_compose_config(files):
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    out = subprocess.run(["docker", "compose", *args, "config", "--quiet"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
