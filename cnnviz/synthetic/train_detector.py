"""Train the synthetic-scene detector (:mod:`.detector`) on CPU in minutes; write its weights and held-out scenes.

    python -m cnnviz.synthetic.train_detector --out models/shapes --seed 0

Writes ``shape_detector.safetensors`` (with its seed and the steps in the file's metadata),
``labels.txt`` and ``scenes/scene-<i>.png`` (held-out scenes: a seed the training never drew) with
their truth in ``scenes/truth.json``. Losses are CenterNet's (Zhou et al. 2019): the
penalty-reduced focal loss on Gaussian heatmaps, L1 on the log box size and on the centre offset.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .detector import ShapeDetector
from .scenes import LABELS, Scene, scene_batch

log = logging.getLogger(__name__)

SIZE = 64  # small enough to train on two contended cores; objects 6-13 px in radius
STRIDE = 4
WIDTH = 16
RADIUS = (0.1, 0.2)  # of the side
HELD_OUT_SEED = 10_000  # scenes for docs and tests come from a seed training never uses


def targets(scenes: list[Scene], classes: int) -> tuple[torch.Tensor, ...]:
    """Heatmaps ``[N,C,h,w]``, and per object: image, cell, log size and offset (CenterNet's targets)."""
    g = SIZE // STRIDE
    heat = torch.zeros(len(scenes), classes, g, g)
    yy, xx = torch.meshgrid(torch.arange(g).float(), torch.arange(g).float(), indexing="ij")
    img, cell, logwh, off = [], [], [], []
    for i, s in enumerate(scenes):
        for box, label in zip(s.boxes, s.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box.tolist()
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            sigma = max(0.5, min(x1 - x0, y1 - y0) / STRIDE / 6)
            gauss = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
            ix, iy = min(g - 1, int(cx)), min(g - 1, int(cy))
            gauss[iy, ix] = 1.0
            heat[i, label - 1] = torch.maximum(heat[i, label - 1], gauss)
            img.append(i)
            cell.append(iy * g + ix)
            logwh.append([math.log(x1 - x0), math.log(y1 - y0)])
            off.append([cx - ix, cy - iy])
    return heat, torch.tensor(img), torch.tensor(cell), torch.tensor(logwh), torch.tensor(off)


def focal(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalized by the number of objects."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def augment(scenes: list[Scene], rng: np.random.Generator) -> list[Scene]:
    """A horizontal flip of half the scenes (boxes flipped with them)."""
    out = []
    for s in scenes:
        if rng.random() < 0.5:
            b = s.boxes.clone()
            b[:, [0, 2]] = SIZE - s.boxes[:, [2, 0]]
            s = Scene(s.image.flip(-1), b, s.labels, s.mask.flip(-1))
        out.append(s)
    return out


def train(seed: int = 0, steps: int = 2500, batch: int = 16, pool: int = 3000, lr: float = 5e-3) -> ShapeDetector:
    """The detector trained from ``seed`` for ``steps`` batches drawn from a pool of ``pool`` scenes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = scene_batch(seed, pool, SIZE, radius=RADIUS)
    net = ShapeDetector(len(LABELS), width=WIDTH)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    t0 = time.perf_counter()
    for step in range(steps):
        pick = augment([scenes[int(j)] for j in rng.integers(0, pool, batch)], rng)
        x = torch.stack([s.image for s in pick])
        heat_t, img, cell, logwh, off = targets(pick, len(LABELS) - 1)
        heat, size, offset = net.maps(x)
        # the size and offset heads at each object's centre cell
        at_size, at_off = size.flatten(2)[img, :, cell], offset.flatten(2)[img, :, cell]
        loss = focal(heat, heat_t) + 0.5 * F.l1_loss(at_size, logwh) + F.l1_loss(at_off, off)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.3f (%.0f s)", step, steps, loss.item(), time.perf_counter() - t0)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--scenes", type=int, default=8, help="held-out scenes to write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # on a contended CPU, OpenMP teams wait on each other; one thread trains faster
    out = Path(args.out)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    net = train(args.seed, args.steps)
    from PIL import Image
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "shape_detector.safetensors"),
              metadata={"seed": str(args.seed), "steps": str(args.steps), "script": "cnnviz.synthetic.train_detector"})
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    truth = []
    for i, s in enumerate(scene_batch(HELD_OUT_SEED, args.scenes, SIZE, radius=RADIUS)):
        Image.fromarray((s.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            out / "scenes" / f"scene-{i}.png")
        truth.append({"file": f"scene-{i}.png", "boxes": s.boxes.tolist(),
                      "labels": [LABELS[v] for v in s.labels.tolist()]})
    (out / "scenes" / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
