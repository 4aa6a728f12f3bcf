"""Train the synthetic-scene segmenter (:mod:`.segmenter`) on CPU in minutes; write its weights and held-out scenes.

    python -m cnnviz.synthetic.train_segmenter --out models/shapes --steps 700

writes ``segmenter.safetensors`` (the weights), ``labels.txt``, ``segmenter.json`` (seed, steps, the
held-out scores) and a few held-out scenes (``segmenter-scenes/scene-<i>.png`` with the true label
map ``segmenter-scenes/scene-<i>-labels.png``) that the tests and the README explain. The scenes
are :mod:`.scenes` at 64 px (the detector trains on the same kind): those of ``seed`` train, those
of :data:`HELD_OUT_SEED` are never seen in training. The loss is per-pixel cross-entropy. On 2 CPU cores the
default run takes a few minutes; the same seed gives the same weights on the same torch build.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .scenes import LABELS, scene_batch
from .segmenter import SceneSegmenter

log = logging.getLogger(__name__)

HELD_OUT_SEED = 100_000
SIZE = 64  # the scenes' side, px: the segmenter's input size
SCENES_DIR = "segmenter-scenes"
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def mean_iou(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> float:
    """Mean intersection over union of the classes present in ``truth`` or ``pred`` (pixel label maps)."""
    ious = []
    for c in range(classes):
        p, t = pred == c, truth == c
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return sum(ious) / max(1, len(ious))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train(steps: int = 700, scenes: int = 1500, size: int = SIZE, seed: int = 0, batch: int = 32,
          lr: float = 3e-3, width: int = 16) -> tuple[SceneSegmenter, dict[str, float | int]]:
    """Train from scratch; returns the network (eval mode) and what the run measured."""
    torch.manual_seed(seed)
    data = scene_batch(seed, scenes, size)
    images = torch.stack([s.image for s in data])
    labels = torch.stack([s.mask for s in data])
    net = SceneSegmenter(len(LABELS), width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed + 1)
    t0, loss_avg = time.perf_counter(), 0.0
    net.train()
    for step in range(steps):
        idx = torch.randint(0, scenes, (batch,), generator=gen)
        x, y = images[idx], labels[idx]
        if bool(torch.rand((), generator=gen) < 0.5):  # flips and quarter turns keep every shape a shape
            x, y = x.flip(-1), y.flip(-1)
        k = int(torch.randint(0, 4, (), generator=gen))
        x, y = x.rot90(k, (-2, -1)), y.rot90(k, (-2, -1))
        loss = F.cross_entropy(net(_normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_avg = 0.95 * loss_avg + 0.05 * float(loss.detach()) if step else float(loss.detach())
        if step % 25 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.3f (%.0f s)", step, steps, loss_avg, time.perf_counter() - t0)
    net.eval()
    held = scene_batch(HELD_OUT_SEED, 64, size)
    with torch.no_grad():
        pred = net(_normalize(torch.stack([s.image for s in held]))).argmax(1)
    truth = torch.stack([s.mask for s in held])
    stats: dict[str, float | int] = {
        "seed": seed, "steps": steps, "train_scenes": scenes, "size": size, "batch": batch, "lr": lr,
        "width": width, "final_loss": round(loss_avg, 4),
        "held_out_scenes": len(held), "held_out_pixel_accuracy": round(float((pred == truth).float().mean()), 4),
        "held_out_mean_iou": round(mean_iou(pred, truth, len(LABELS)), 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return net, stats


def write(out: Path, net: SceneSegmenter, stats: dict[str, float | int], size: int, seed: int,
          held_out: int = 4) -> None:
    """The weights, labels, run record and ``held_out`` scenes (picture and true label map) under ``out``."""
    from PIL import Image
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "segmenter.safetensors"),
              metadata={k: str(v) for k, v in stats.items()})
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (out / "segmenter.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / SCENES_DIR).mkdir(exist_ok=True)
    for i, s in enumerate(scene_batch(HELD_OUT_SEED, held_out, size)):
        Image.fromarray((s.image * 255).round().byte().permute(1, 2, 0).numpy()).save(out / SCENES_DIR /
                                                                                       f"scene-{i}.png")
        Image.fromarray(s.mask.byte().numpy(), mode="L").save(out / SCENES_DIR / f"scene-{i}-labels.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models/shapes"))
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--scenes", type=int, default=1500)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    net, stats = train(args.steps, args.scenes, args.size, args.seed)
    write(args.out, net, stats, args.size, args.seed)
    log.info("wrote %s: %s", args.out, stats)


if __name__ == "__main__":
    main()
