"""``cnnviz samples`` writes every input file the README's examples send, so each example pastes as it stands."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from stack.cli import main
from stack.samples import write_samples

README = Path(__file__).resolve().parents[2] / "README.md"
# A file a README example sends: curl's -F field=@FILE, or the client's and the CLI's image arguments.
SENT = re.compile(r"""(?:=@|cnnviz (?:predict|explain|job \w+) |c\.\w+\(")([\w.-]+\.(?:jpg|jpeg|png|zip|json))""")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {p.name: p for p in write_samples(tmp_path_factory.mktemp("samples"))}


def test_every_file_the_readme_sends_is_a_sample(samples: dict[str, Path]) -> None:
    sent = set(SENT.findall(README.read_text()))
    assert {"chelsea.jpg", "labelled.zip", "photos.zip"} <= sent  # the pattern finds the README's examples
    assert sent - set(samples) == set(), "README examples send files that `cnnviz samples` does not write"


def test_samples_are_readable_and_labels_match(samples: dict[str, Path]) -> None:
    for name, path in samples.items():
        if name.endswith((".jpg", ".png")):
            with Image.open(path) as im:
                assert im.mode == "RGB" and min(im.size) >= 256
    labels = json.loads(samples["labelled.json"].read_text())["labels"]
    with zipfile.ZipFile(samples["labelled.zip"]) as z:
        names = z.namelist()
    assert len(names) == len(labels) and len(set(labels)) >= 2
    # each member's name carries its label, so the zip order and the label list agree
    assert [n.split("-", 1)[1].rsplit(".", 1)[0] for n in names] == labels
    with zipfile.ZipFile(samples["photos.zip"]) as z:
        assert len(z.namelist()) >= 8


def test_cli_writes_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out.split()
    assert set(printed) == {str(p) for p in (tmp_path / "s").iterdir()} and len(printed) == 9


def test_labelled_boxes_follow_each_view(samples: dict[str, Path]) -> None:
    """labelled.json's boxes: one list per image, inside its view, the mirror view's box mirrored."""
    meta = json.loads(samples["labelled.json"].read_text())
    with zipfile.ZipFile(samples["labelled.zip"]) as z:
        sizes = [Image.open(io.BytesIO(z.read(n))).size for n in z.namelist()]
    assert len(meta["boxes"]) == len(sizes)
    for row, (w, h) in zip(meta["boxes"], sizes, strict=True):
        assert len(row) == 1
        x0, y0, x1, y1 = row[0]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    for i in range(0, len(sizes), 4):  # view 0 is the photo, view 1 its mirror image
        (a0, b0, a1, b1), (m0, n0, m1, n1) = meta["boxes"][i][0], meta["boxes"][i + 1][0]
        assert (m0, n0, m1, n1) == (sizes[i][0] - a1, b0, sizes[i][0] - a0, b1)
