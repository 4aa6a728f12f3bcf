"""The client distribution installs alone in a fresh venv (httpx from the package index, no torch)
and its ``cnnviz`` script talks to the live service from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.jobs.jobkit import KEY_A, ROOT, Stack

pytestmark = pytest.mark.jobs
CLIENT = ROOT / "clients" / "python"
# pip's words when it cannot reach an index; any other failure is a real one.
OFFLINE = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable",
           "No matching distribution found for httpx", "Could not fetch URL", "ConnectTimeoutError",
           "Name or service not known", "No matching distribution found for setuptools")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.timeout(180)
def test_fresh_venv_has_the_client_and_no_torch(tmp_path: Path, stack: Stack) -> None:
    base = shutil.which("python3.11") or sys.executable
    venv = tmp_path / "venv"
    # No pip inside the venv (that is seconds of ensurepip): this interpreter's pip installs into it.
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the source tree
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = _clean_env()
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--retries", "0",
                          "--timeout", "20", str(src)], capture_output=True, text=True, timeout=150, env=env,
                         cwd=tmp_path)
    if pip.returncode != 0:
        output = pip.stdout + pip.stderr
        if any(marker in output for marker in OFFLINE):
            pytest.skip(f"pip cannot reach a package index: {output.strip().splitlines()[-1]}")
        pytest.fail(f"pip install of the client failed:\n{output}")

    def run(*args: str, **kw: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**env, **kw})

    probe = run(str(py), "-c", "import sys, cnnviz_client, cnnviz_client.cli, httpx; print(cnnviz_client.__file__); "
                "print(sorted(m for m in ('numpy', 'PIL', 'torch') if m in sys.modules))")
    assert probe.returncode == 0, probe.stderr
    where, lazy = probe.stdout.splitlines()
    assert Path(where).is_relative_to(venv) and lazy == "[]"  # installed, not the source; optional deps not loaded
    torch = run(str(py), "-c", "import torch")
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
    listed = run(str(py), "-m", "pip", "list") if (venv / "bin" / "pip").exists() else None
    assert listed is None or "torch" not in listed.stdout

    script = venv / "bin" / "cnnviz"
    models = run(str(script), "--url", stack.base, "models", CNNVIZ_API_KEY=KEY_A)
    assert models.returncode == 0 and "efficientnet-lite0" in models.stdout, models.stderr
    serve = run(str(script), "serve")
    assert serve.returncode == 2 and "the cnnviz service is not installed here" in serve.stderr
