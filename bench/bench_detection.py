"""D-RISE: cnnviz's batched sweep against microsoft/vision-explanation-methods' (one forward per mask).

    python bench/bench_detection.py [--masks 300] [--processes 5] [--readme]

Same work on both sides: the committed synthetic-scene detector (models/shapes), held-out scene 0,
its three detections as targets, the very same masks (the peer's ``generate_mask`` is handed
cnnviz's masks in order), one torch thread, float32. The peer wraps the detector as its
``GeneralObjectDetectionModelWrapper`` (class-score vectors, objectness 1: cnnviz's similarity for a
detector without objectness). Each timing runs in a fresh process, the sides interleaved; the ratio
is of the medians. The Grad-CAM row is one box explanation (forward, one backward, the map) beside
one plain detector forward of the same image. With ``--readme`` the table goes to docs/benchmarks.md
(``<!-- bench:detection -->``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENE = ROOT / "models" / "shapes" / "scenes" / "scene-0.png"
CELL = 8


def _setup():
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from cnnviz.models import load_model, specs_from_file

    model = load_model(specs_from_file(ROOT / "models" / "shapes" / "models.toml")[0])
    x = torch.from_numpy(np.asarray(Image.open(SCENE), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return torch, model, x


def _masks(torch, count: int, x):
    from cnnviz.attribution.perturbation import rise_masks

    gen = torch.Generator().manual_seed(0)
    return rise_masks(count, CELL, 0.5, x.shape[-2], x.shape[-1], gen, x.device, x.dtype)


def run_ours(masks: int) -> dict[str, float]:
    torch, model, x = _setup()
    from cnnviz.attribution import BoxTargets, get_method

    drise = get_method("drise")
    t = time.perf_counter()
    res = drise.attribute(model, x, BoxTargets(top_k=3), masks=masks, cell=CELL, seed=0, batch_size=64)
    took = time.perf_counter() - t
    return {"s": took, "sum": float(sum(m.sum() for m in res.maps[0]))}


def run_peer(masks: int) -> dict[str, float]:
    torch, model, x = _setup()
    from vision_explanation_methods.explanations import drise as peer
    from vision_explanation_methods.explanations.common import DetectionRecord, GeneralObjectDetectionModelWrapper

    from cnnviz.models.tasks import read_detections

    class Wrapped(GeneralObjectDetectionModelWrapper):
        def predict(self, batch):
            with torch.no_grad():
                dets = read_detections(model.spec, model.module(batch), batch.shape[0])
            return [DetectionRecord(d.boxes, torch.ones(len(d)), d.class_vectors(len(model.labels))) for d in dets]

    wrapped = Wrapped()
    base = wrapped.predict(x)[0]
    with torch.no_grad():
        order = read_detections(model.spec, model.module(x), 1)[0].scores.argsort(descending=True)[:3]
    targets = [base.get_by_index(order.tolist())]  # the three boxes cnnviz's top_k = 3 names
    ours = iter(_masks(torch, masks, x))
    peer.generate_mask = lambda *_a, **_k: next(ours).expand(3, -1, -1)  # the same masks, in order
    t = time.perf_counter()
    peer.DRISE_saliency(wrapped, x, targets, masks, mask_res=(CELL, CELL))
    return {"s": time.perf_counter() - t}


def run_gradcam(_masks: int) -> dict[str, float]:
    torch, model, x = _setup()
    from cnnviz.attribution import BoxTargets, get_method

    cam = get_method("gradcam")
    cam.attribute(model, x, BoxTargets(indices=(0,)))  # warm-up: first calls allocate
    t = time.perf_counter()
    for _ in range(20):
        cam.attribute(model, x, BoxTargets(indices=(0,)))
    per_cam = (time.perf_counter() - t) / 20
    with torch.no_grad():
        model.module(x)
        t = time.perf_counter()
        for _ in range(20):
            model.module(x)
    return {"s": per_cam, "forward": (time.perf_counter() - t) / 20}


RUNNERS = {"ours": run_ours, "peer": run_peer, "gradcam": run_gradcam}


def fresh(kind: str, masks: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--masks", str(masks)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", type=int, default=300)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--one", choices=list(RUNNERS))
    args = ap.parse_args()
    if args.one:
        sys.stdout.write(json.dumps(RUNNERS[args.one](args.masks)) + "\n")
        return
    import torch

    runs: dict[str, list[dict[str, float]]] = {k: [] for k in RUNNERS}
    for _ in range(args.processes):  # interleaved: each round one fresh process per side
        for kind in RUNNERS:
            runs[kind].append(fresh(kind, args.masks))

    def stat(kind: str, key: str = "s") -> tuple[float, float, float]:
        v = [r[key] for r in runs[kind]]
        return statistics.median(v), min(v), max(v)

    ours, peer = stat("ours"), stat("peer")
    cam, fwd = stat("gradcam"), stat("gradcam", "forward")
    ms = lambda t: f"{t[0] * 1000:.1f} ({t[1] * 1000:.1f}-{t[2] * 1000:.1f})"  # noqa: E731
    lines = [
        f"torch {torch.__version__}, {platform.machine()}, 1 torch thread, models/shapes detector at 64 px, "
        f"scene-0, 3 boxes, {args.masks} masks of {CELL}x{CELL} cells (the same masks on both sides), "
        f"{args.processes} fresh processes per row, interleaved; median (min-max) ms",
        "",
        "| D-RISE | ms | vs peer |",
        "|---|---|---|",
        f"| vision-explanation-methods (one forward per mask) | {ms(peer)} | 1.00x |",
        f"| cnnviz drise (one batched sweep for all boxes) | {ms(ours)} | {peer[0] / ours[0]:.1f}x |",
        "",
        "| Grad-CAM box explanation | ms |",
        "|---|---|",
        f"| one detector forward | {ms(fwd)} |",
        f"| gradcam, one box (resolve, forward, backward, map) | {ms(cam)} ({cam[0] / fwd[0]:.1f} forwards) |",
    ]
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    if args.readme:
        from bench.readme import write_block

        write_block("detection", text)


if __name__ == "__main__":
    main()
