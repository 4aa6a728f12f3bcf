"""Layer sweeps and verifiers from the Python client and the ``cnnviz`` command line, against the live stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from cnnviz_client import Client
from cnnviz_client.cli import main
from PIL import Image

from tests.jobs.jobkit import KEY_A, Stack

pytestmark = pytest.mark.jobs


def test_client_sweep_equals_lone_requests(viz: Client, cat_file: Path) -> None:
    """``layers=`` answers every layer; each map's range is its lone request's."""
    res = viz.explain(cat_file, "gradcam", layers=["_blocks.4", "act_head"], resolution=64, target=285,
                      output={"figure": True, "format": "png"})
    assert res.layers == ["_blocks.4", "act_head"] and res.job_id is None
    e = res.explanations[0]
    assert [lm.layer for lm in e.layers] == res.layers and e.layers[0].overlay is not None
    for lm in e.layers:
        lone = viz.explain(cat_file, "gradcam", layer=lm.layer, resolution=64, target=285).explanations[0]
        assert lm.map.shape == lone.map.shape
        assert lm.map.max == pytest.approx(lone.map.max, rel=1e-4, abs=1e-6)
    assert e.figure is not None and e.figure.startswith(b"\x89PNG")
    assert viz.verifiers() == [] or all(v.kind == "verifier" for v in viz.verifiers())


def test_cli_layers_saves_the_row(api, stack: Stack, cat_file: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CNNVIZ_URL", stack.base)
    monkeypatch.setenv("CNNVIZ_API_KEY", KEY_A)
    out_png = tmp_path / "sweep.png"
    rc = main(["explain", str(cat_file), "--method", "gradcam", "--layers", "blocks", "--param", "resolution=64",
               "--out", str(out_png)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "", err
    assert out.startswith("gradcam on efficientnet-lite0, layers act_stem, _blocks.0,")
    assert "    act_head     map 2x2" in out and f"overlay: {out_png}" in out
    with Image.open(out_png) as im:
        assert im.width > 4 * im.height  # one captioned row of nine layers
    rc = main(["explain", str(cat_file), "--method", "gradcam", "--layers", "act_stem,_blocks.44"])
    out, err = capsys.readouterr()
    assert rc != 0 and "_blocks.4" in err  # the closest names
