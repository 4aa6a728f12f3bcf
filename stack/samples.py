"""``cnnviz samples DIR``: the input files the README's examples name, written from bundled photos.

A new user should be able to paste every example of the README as it stands. The photos come from
the scikit-image wheel the service already installs (nothing is downloaded), so the examples work
offline and behind a firewall. The labelled set is views (crops and mirror images) of three
photos: enough to try the collection, identification and triplet-head routes, not to measure
anything with.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
"""Written as ``NAME.jpg``: the photos the README's examples send."""

STYLE = "immunohistochemistry"
"""Written as ``NAME.png``: the style image of the style and fast-style examples."""

CONTENT = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry", "retina",
           "camera")
"""``photos.zip``: a content collection (fast style, embedding maps, top patches)."""

LABELLED = {"cat": "chelsea", "cup": "coffee", "rocket": "rocket"}
"""``labelled.zip`` + ``labelled.json``: four views per label, in label order."""

VIEWS = 4

BOXES = {"chelsea": (100, 50, 370, 280), "coffee": (170, 15, 420, 305), "rocket": (300, 125, 345, 410)}
"""The object in each labelled photo, (x0, y0, x1, y1) in its pixels (the cat's face, the cup, the rocket),
annotated by eye; ``labelled.json`` carries it into each view for the evaluate job's pointing games."""
SEGMENTER_SCENE = "segmenter-scene.png"
"""A held-out synthetic scene of the repository's segmenter (models/shapes), 4x larger: the segmentation
examples' image, the same scene as ``models/shapes/segmenter-scenes/scene-0.png``."""


def _segmenter_scene() -> np.ndarray:
    from cnnviz.synthetic.scenes import scene_batch
    from cnnviz.synthetic.train_segmenter import HELD_OUT_SEED, SIZE

    scene = scene_batch(HELD_OUT_SEED, 1, SIZE)[0]
    arr = (scene.image * 255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(arr.repeat(4, 0).repeat(4, 1))


def _photo(name: str) -> np.ndarray:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3].astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _views(arr: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` different views of one photo: the whole, a mirror, and off-centre crops of 80 %."""
    h, w = arr.shape[:2]
    ch, cw = int(h * 0.8), int(w * 0.8)
    crops = [arr, arr[:, ::-1], arr[:ch, :cw], arr[h - ch:, w - cw:], arr[:ch, w - cw:], arr[h - ch:, :cw]]
    return [np.ascontiguousarray(c) for c in crops[:n]]


def _view_boxes(box: tuple[int, int, int, int], h: int, w: int, n: int) -> list[list[list[int]]]:
    """``box`` in each of :func:`_views`' first ``n`` views (mirrored, cropped and clipped like the view)."""
    ch, cw = int(h * 0.8), int(w * 0.8)
    x0, y0, x1, y1 = box
    # (mirror, crop origin x, crop origin y, view width, view height) of each view, in _views' order
    frames = [(False, 0, 0, w, h), (True, 0, 0, w, h), (False, 0, 0, cw, ch), (False, w - cw, h - ch, cw, ch),
              (False, w - cw, 0, cw, ch), (False, 0, h - ch, cw, ch)]
    out = []
    for mirror, ox, oy, vw, vh in frames[:n]:
        a0, a1 = (w - x1, w - x0) if mirror else (x0, x1)
        b = [max(0, a0 - ox), max(0, y0 - oy), min(vw, a1 - ox), min(vh, y1 - oy)]
        out.append([b] if b[0] < b[2] and b[1] < b[3] else [])
    return out


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def write_samples(folder: Path) -> list[Path]:
    """Write every sample file into ``folder`` (created if missing); returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Callable[[], bytes]] = {f"{n}.jpg": (lambda n=n: _encode(_photo(n), "JPEG")) for n in PHOTOS}
    files[f"{STYLE}.png"] = lambda: _encode(_photo(STYLE), "PNG")
    files["photos.zip"] = lambda: _zip([(f"{i:02d}-{n}.jpg", _encode(_photo(n), "JPEG"))
                                        for i, n in enumerate(CONTENT)])
    labels = [label for label in LABELLED for _ in range(VIEWS)]
    files["labelled.zip"] = lambda: _zip([(f"{i:02d}-{label}.jpg", _encode(view, "JPEG"))
                                          for i, (label, view) in enumerate(
                                              (label, v) for label, n in LABELLED.items()
                                              for v in _views(_photo(n), VIEWS))])
    boxes = [b for n in LABELLED.values() for b in _view_boxes(BOXES[n], *_photo(n).shape[:2], VIEWS)]
    files["labelled.json"] = lambda: (json.dumps({"labels": labels, "boxes": boxes}) + "\n").encode()
    files[SEGMENTER_SCENE] = lambda: _encode(_segmenter_scene(), "PNG")
    written = []
    for name, make in files.items():
        path = folder / name
        path.write_bytes(make())
        written.append(path)
    log.info("wrote %d sample files into %s", len(written), folder)
    return written
