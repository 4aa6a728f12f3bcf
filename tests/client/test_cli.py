"""The ``cnnviz`` command line end to end against the live stack: in-process through ``main()``
for most commands, and as real processes for ``python -m cnnviz_client.cli``, the installed
``cnnviz`` script and the service's own command line handing client commands over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cnnviz_client.cli import command_of, main, params_from, parse_param
from PIL import Image

from tests.jobs.jobkit import KEY_A, ROOT, Stack

pytestmark = pytest.mark.jobs
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(api, stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """``main([...])`` with CNNVIZ_URL / CNNVIZ_API_KEY set for the live stack: (exit status, stdout, stderr)."""
    monkeypatch.setenv("CNNVIZ_URL", stack.base)
    monkeypatch.setenv("CNNVIZ_API_KEY", KEY_A)
    capsys.readouterr()

    def go(*args: str) -> tuple[int, str, str]:
        rc = main(list(args))
        out, err = capsys.readouterr()
        return rc, out, err

    return go


def test_params_and_command_parsing() -> None:
    assert parse_param("steps=8") == (["steps"], 8)
    assert parse_param("layer=_blocks.10") == (["layer"], "_blocks.10")
    assert parse_param("targets=[[1, 2]]") == (["targets"], [[1, 2]])
    assert parse_param("name=true") == (["name"], True)
    assert params_from([parse_param("localization.method=otsu"), parse_param("localization.fraction=0.4"),
                        parse_param("top_k=2")]) == {"localization": {"method": "otsu", "fraction": 0.4}, "top_k": 2}
    assert command_of(["--url", "http://x", "--log-level", "DEBUG", "serve", "--port", "1"]) == "serve"
    assert command_of(["--json", "predict", "a.png"]) == "predict" and command_of(["--help"]) is None
    assert command_of(["models", "--url", "http://x", "--json"]) == "models"


def test_catalog_and_predict(run, cat_file: Path) -> None:
    rc, out, err = run("models")
    assert rc == 0 and err == "" and "efficientnet-lite0" in out and "(default)" in out
    rc, out, _ = run("methods", "--kind", "explain")
    assert rc == 0 and "gradcam" in out and "class_viz" not in out and "inline budget: 1.2" in out
    rc, out, _ = run("predict", str(cat_file), "--top-k", "2")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith(f"{cat_file} (64x48") and len(lines) == 3
    assert lines[1].split()[0] == "1." and 0 < float(lines[1].split()[1]) <= 1
    rc, out, _ = run("--json", "predict", str(cat_file), "--top-k", "1")
    assert rc == 0 and len(json.loads(out)["images"][0]["predictions"]) == 1
    # global options after the command as well as before it
    rc, out, err = run("models", "--json")
    assert rc == 0 and err == "" and "efficientnet-lite0" in {m["name"] for m in json.loads(out)}
    rc, out, err = run("predict", str(cat_file), "--url", "http://127.0.0.1:9", "--retries", "0")
    assert rc == 1 and out == "" and "cannot reach the service at http://127.0.0.1:9" in err
    rc, out, err = run("--url", "http://127.0.0.1:9", "predict", str(cat_file), "--top-k", "1", "--url",
                       os.environ["CNNVIZ_URL"], "--json")  # the last one given wins
    assert rc == 0 and len(json.loads(out)["images"][0]["predictions"]) == 1, err


def test_explain(run, cat_file: Path, tmp_path: Path) -> None:
    out_png = tmp_path / "overlay.png"
    rc, out, err = run("explain", str(cat_file), "--method", "gradcam", "--top-k", "2", "--param", "resolution=64",
                       "--param", "localization.method=otsu", "--out", str(out_png))
    assert rc == 0 and err == "", err
    assert out.startswith("gradcam on efficientnet-lite0, layer ") and "(job " not in out
    assert f"overlay: {out_png}" in out and f"overlay: {tmp_path / 'overlay-0-1.png'}" in out
    with Image.open(out_png) as im:
        assert im.size == (64, 48)
    assert (tmp_path / "overlay-0-1.png").read_bytes().startswith(PNG)
    # Over the inline budget: the service made it a job, the CLI followed it.
    rc, out, _ = run("explain", str(cat_file), "--method", "gradcam", "--target", "285", "--layer", "_blocks.15")
    assert rc == 0 and "(job " in out and "Egyptian cat (285)" in out and "layer _blocks.15" in out
    rc, out, _ = run("--json", "explain", str(cat_file), "--method", "gradcam", "--param", "resolution=64",
                     "--param", "output.raw=false")
    body = json.loads(out)
    assert rc == 0 and body["method"] == "gradcam" and body["images"][0]["explanations"][0]["map"]["values"] is None


def test_problems_and_usage(run, stack: Stack, cat_file: Path, tmp_path: Path) -> None:
    # the help the problem carries is printed: the names it suggests and where to look them up
    rc, out, err = run("explain", str(cat_file), "--method", "gradcan")
    lines = err.splitlines()
    assert rc == 1 and out == "" and lines[0] == "No method named 'gradcan'" and len(lines) == 3, err
    assert lines[1].startswith("  did you mean: gradcam, ")
    assert lines[2] == f"  see: {stack.base}/v1/methods (cnnviz methods)"
    rc, out, err = run("explain", str(cat_file), "--method", "gradcam", "--layer", "blocks.10", "--param",
                       "resolution=64")  # inline (a job hand-off's error carries no choices)
    lines = err.splitlines()
    assert rc == 1 and "has no layer 'blocks.10'" in lines[0] and len(lines) == 3, err
    assert lines[1].startswith("  did you mean: _blocks.10, ")
    assert lines[2] == f"  see: {stack.base}/v1/models/efficientnet-lite0"
    rc, _, err = run("explain", str(cat_file), "--method", "gradcam", "--param", "top_k=99")
    assert rc == 1 and err.startswith("Invalid parameters: top_k:") and err.count("\n") == 1
    rc, _, err = run("status", "0123456789abcdef")
    assert rc == 1 and err.startswith("No job '0123456789abcdef'")
    rc, _, err = run("predict", str(tmp_path / "missing.png"))
    assert rc == 1 and "no such image file" in err
    rc, _, err = run("explain", str(cat_file))  # --method is required
    assert rc == 2 and "--method" in err
    rc, _, err = run("explain", str(cat_file), "--method", "gradcam", "--target", "1", "--top-k", "2")
    assert rc == 2 and "not allowed with" in err
    rc, _, err = run("--api-key", "wrong", "models")
    assert rc == 1 and err.startswith("A valid API key is required: ")


def test_job_wait_out_and_job_commands(run, cat_file: Path, tmp_path: Path) -> None:
    dream = tmp_path / "dream.png"
    tiny = ["--param", "octaves=1", "--param", "steps=3", "--param", "size=32", "--param", "jitter=2",
            "--param", "preview_every=0"]
    rc, out, err = run("job", "deepdream", str(cat_file), *tiny, "--wait", "--out", str(dream))
    assert rc == 0, err
    job_id = out.split()[0]
    assert " succeeded " in out and f"result: {dream}" in out
    assert job_id in err and "100%" in err  # the progress bar, on stderr
    with Image.open(dream) as im:
        assert im.size == (32, 24)

    rc, out, _ = run("job", "deepdream", *tiny)  # no --wait: the bare id, for ID=$(cnnviz job ...)
    other = out.strip()
    assert rc == 0 and out == other + "\n" and len(other) == 32 and int(other, 16) >= 0
    rc, out, _ = run("status", other, "--wait", "20")
    assert rc == 0 and out.startswith(f"{other}  deepdream    succeeded 100%") and "artifact: result.json" in out
    rc, out, _ = run("result", other, "--artifact", "result.json")
    assert rc == 0 and json.loads(out)["width"] == 32
    rc, out, _ = run("result", other, "--out", str(tmp_path / "other.png"))
    assert rc == 0 and (tmp_path / "other.png").read_bytes().startswith(PNG)
    rc, out, _ = run("job", "deepdream", *tiny, "--json")  # --json: the whole record
    third = json.loads(out)
    assert rc == 0 and third["type"] == "deepdream" and third["status"] in ("queued", "running", "succeeded")
    rc, out, err = run("result", third["id"], "--wait", "60", "--out", str(tmp_path / "third.png"))  # waits, fetches
    assert rc == 0 and out == f"result: {tmp_path / 'third.png'}\n", err
    assert (tmp_path / "third.png").read_bytes().startswith(PNG)
    rc, out, _ = run("jobs", "--limit", "500")
    assert rc == 0 and job_id in out and other in out
    rc, out, _ = run("--json", "jobs", "--status", "succeeded", "--limit", "500")
    assert rc == 0 and {job_id, other} <= {j["id"] for j in json.loads(out)}

    rc, out, _ = run("job", "deepdream", "--param", "octaves=4", "--param", "steps=500", "--param", "size=128")
    long = out.split()[0]
    deadline = time.monotonic() + 60
    while " running " not in run("status", long)[1]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rc, out, err = run("result", long)  # not finished: said so, with how to wait
    assert rc == 1 and out == "" and err == (f"job {long} is running, not finished: no result yet; wait for it "
                                             f"with: cnnviz result {long} --wait SECONDS\n")
    rc, out, err = run("result", long, "--wait", "0.5")  # it outlives the wait
    assert rc == 1 and out == "" and err.startswith(f"job {long} is still running (") and "--wait" in err
    rc, out, _ = run("cancel", long)
    assert rc == 0 and out.startswith(long) and ("cancel requested" in out or "canceled" in out)
    rc, out, _ = run("status", long, "--wait", "15")
    assert rc == 0 and " canceled " in out
    rc, _, err = run("job", "deepdream", "--param", "octaves=99", "--wait")
    assert rc == 1 and err.startswith("Invalid job request: ")


def _service_cli() -> str:
    """The module of the service's own ``cnnviz`` command, from the project's pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        target = tomllib.load(fh)["project"]["scripts"]["cnnviz"]
    return target.split(":")[0]


def _env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CNNVIZ_URL", "CNNVIZ_API_KEY")}
    return {**env, "CNNVIZ_URL": stack.base, "CNNVIZ_API_KEY": KEY_A}


def test_processes_and_hand_over(api, stack: Stack, cat_file: Path, tmp_path: Path) -> None:
    env = _env(stack)
    cmds = {
        "module": [sys.executable, "-m", "cnnviz_client.cli", "predict", str(cat_file), "--top-k", "1"],
        # the service's command line hands every client command to the client's (global options after it too)
        "service": [sys.executable, "-m", _service_cli(), "predict", str(cat_file), "--top-k", "1",
                    "--url", stack.base],
        # the console script of the venv (the client's or the service's: both run every command)
        "script": [str(Path(sys.executable).parent / "cnnviz"), "--url", stack.base, "predict", str(cat_file)],
    }
    procs = {k: subprocess.Popen(v, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, v in cmds.items()}
    results = {k: p.communicate(timeout=60) + (p.returncode,) for k, p in procs.items()}
    for name, (out, err, rc) in results.items():
        assert rc == 0 and out.startswith(f"{cat_file} (64x48, efficientnet-lite0)"), (name, out, err)
    assert results["module"][0].splitlines()[1] == results["service"][0].splitlines()[1]

    # serve/worker go to the service's command line (here: its --help, which exits at once).
    helps = [subprocess.run([sys.executable, "-m", mod, cmd, "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60) for mod, cmd in (("cnnviz_client.cli", "serve"),
                                                                      ("cnnviz_client.cli", "worker"))]
    assert helps[0].returncode == 0 and "--no-jobs" in helps[0].stdout
    assert helps[1].returncode == 0 and "--max-jobs" in helps[1].stdout

    # a reader that stops reading (cnnviz ... | head): a quiet end, as a writer killed by SIGPIPE
    proc = subprocess.Popen([sys.executable, "-m", "cnnviz_client.cli", "methods", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err
