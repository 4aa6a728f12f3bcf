"""Saving a received picture writes the format its file name asks for (the service answers JPEG by
default; ``overlay.png`` must hold PNG bytes), converting with Pillow, or refusing clearly without it."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from cnnviz_client import Artifact, Explanation, ImageFormatError, StyleResult
from cnnviz_client.types import RawMap, Target
from PIL import Image

PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (12, 8), (200, 30, 40) if mode == "RGB" else (200, 30, 40, 128)).save(buf, format=fmt)
    return buf.getvalue()


def _explanation(overlay: bytes) -> Explanation:
    return Explanation(target=Target(index=285, score=1.0), map=RawMap(shape=(1, 1), min=0.0, max=1.0),
                       overlay=overlay, heatmap=overlay, media_type="image/jpeg")


@pytest.mark.parametrize("name,magic", [("overlay.png", PNG), ("overlay.PNG", PNG), ("overlay.jpg", JPEG),
                                        ("overlay.jpeg", JPEG), ("overlay.gif", b"GIF8"), ("overlay.bmp", b"BM")])
def test_saved_bytes_are_in_the_format_the_name_asks_for(tmp_path: Path, name: str, magic: bytes) -> None:
    jpeg = _encoded("JPEG")
    path = _explanation(jpeg).save(tmp_path / name)
    data = Path(path).read_bytes()
    assert data.startswith(magic)
    if magic == JPEG:
        assert data == jpeg  # already in the asked format: written as received, not re-encoded
    with Image.open(path) as im:
        assert im.size == (12, 8)


def test_webp_and_png_sources(tmp_path: Path) -> None:
    data = Path(_explanation(_encoded("JPEG")).save(tmp_path / "o.webp", which="heatmap")).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    rgba = _encoded("PNG", "RGBA")  # a transparent PNG into JPEG (no alpha channel there)
    assert Path(StyleResult("s", 12, 8, rgba).save(tmp_path / "styled.jpg")).read_bytes().startswith(JPEG)


def test_names_without_an_image_suffix_and_non_pictures_are_written_as_received(tmp_path: Path) -> None:
    jpeg = _encoded("JPEG")
    assert Path(_explanation(jpeg).save(tmp_path / "overlay")).read_bytes() == jpeg
    assert Path(_explanation(jpeg).save(tmp_path / "overlay.bin")).read_bytes() == jpeg
    doc = json.dumps({"width": 32}).encode()
    assert Path(Artifact("result.json", "application/json", doc).save(tmp_path / "r.png")).read_bytes() == doc
    png = _encoded("PNG")
    art = Artifact("result", "image/png", png)
    assert Path(art.save(tmp_path / "dream.jpg")).read_bytes().startswith(JPEG)


def test_without_pillow_a_mismatch_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if the [pil] extra were not installed
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    jpeg = JPEG + b"\xe0" + b"\0" * 16  # only the signature is read
    with pytest.raises(ImageFormatError) as info:
        _explanation(jpeg).save(tmp_path / "overlay.png")
    msg = str(info.value)
    assert "asks for PNG" in msg and "is JPEG" in msg and "cnnviz-client[pil]" in msg
    assert "output.format='png'" in msg and ".jpg" in msg
    assert isinstance(info.value, ValueError) and not (tmp_path / "overlay.png").exists()
    # the format asked for is the one received: nothing to convert, Pillow not needed
    assert Path(_explanation(jpeg).save(tmp_path / "overlay.jpg")).read_bytes() == jpeg
