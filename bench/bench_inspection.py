"""Collection throughput: features of a 500-image collection per second, and neighbour queries per second.

The collection is augmented copies (crops, flips, rotations, brightness) of the scikit-image
photos at 224 px, fed to EfficientNet-Lite0's default feature layer (``act_head``, average
pooled: the 1280-d penultimate vector). Feature extraction is timed at several batch sizes;
neighbour queries against the collection's features are timed one query per call, batched, and
end to end (query image -> features -> feature- and pixel-space neighbours).

    .venv/bin/python bench/bench_inspection.py [--n 500] [--batch-sizes 1,8,32] [--single 100]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.inspection import extract_features, nearest, neighbour_lists, pixel_features  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402

log = logging.getLogger("bench")

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "retina", "stereo_motorcycle", "colorwheel", "coins", "moon", "brick", "gravel", "clock", "page"]


def photos() -> list[torch.Tensor]:
    import skimage.data as d

    out = []
    for name in PHOTOS:
        a = getattr(d, name)()
        a = a[0] if isinstance(a, tuple) else a
        t = torch.from_numpy(a.copy()).float() / 255
        t = t[None].repeat(3, 1, 1) if t.dim() == 2 else t[..., :3].permute(2, 0, 1)
        out.append(t.contiguous())
    return out


def augmented(n: int, size: int = 224, seed: int = 0) -> list[torch.Tensor]:
    """``n`` seeded random views (crop, flip, rotation, brightness) of the photos, each ``[3,size,size]``."""
    gen = torch.Generator().manual_seed(seed)
    base = photos()
    out = []
    for i in range(n):
        img = base[i % len(base)]
        h, w = img.shape[-2:]
        keep = 0.6 + 0.4 * float(torch.rand(1, generator=gen))
        ch, cw = int(h * keep), int(w * keep)
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        v = TF.resize(img[:, y0:y0 + ch, x0:x0 + cw], [size, size], antialias=True)
        if float(torch.rand(1, generator=gen)) < 0.5:
            v = v.flip(-1)
        v = TF.rotate(v, float(torch.empty(1).uniform_(-15, 15, generator=gen)))
        out.append((v * (0.7 + 0.6 * float(torch.rand(1, generator=gen)))).clamp(0, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="collection size")
    ap.add_argument("--batch-sizes", default="1,4,32")
    ap.add_argument("--single", type=int, default=100, help="images timed at batch size 1 (it is slow)")
    ap.add_argument("--layer", default=None)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="100 images: checks the script, not the figures")
    ap.add_argument("--readme", action="store_true", help="rewrite the collections block of docs/benchmarks.md")
    args = ap.parse_args()
    if args.quick:
        args.n, args.single, args.queries = 100, 20, 50
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    layer = args.layer or model.default_layer
    t0 = time.perf_counter()
    images = augmented(args.n)
    log.info("built %d augmented 224 px images in %.1f s", len(images), time.perf_counter() - t0)
    extract_features(model, images[:8], layer, batch_size=8)  # warm-up (oneDNN kernels, layer call count)

    rows = []
    feats = None
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        subset = images if bs > 1 else images[: args.single]
        t0 = time.perf_counter()
        f = extract_features(model, subset, layer, batch_size=bs)
        dt = time.perf_counter() - t0
        if len(subset) == len(images):
            feats = f
        rows.append([f"features ({layer}, avg), batch {bs}", f"{len(subset)} images", f"{dt:.2f} s",
                     f"{len(subset) / dt:.1f} images/s"])
    if feats is None:
        feats = extract_features(model, images, layer, batch_size=32)
    pixels = pixel_features(images)

    q = feats[: args.queries]
    t0 = time.perf_counter()
    for row in q:
        nearest(row, feats, k=9, metric="cosine")
    dt = time.perf_counter() - t0
    rows.append([f"nearest (cosine, {feats.shape[1]}-d), one query per call", f"{len(q)} queries", f"{dt:.3f} s",
                 f"{len(q) / dt:.0f} queries/s"])
    t0 = time.perf_counter()
    nearest(q, feats, k=9, metric="cosine")
    dt = time.perf_counter() - t0
    rows.append([f"nearest (cosine, {feats.shape[1]}-d), {len(q)} queries batched", f"{len(q)} queries",
                 f"{dt:.4f} s", f"{len(q) / dt:.0f} queries/s"])
    t0 = time.perf_counter()
    for row in pixels[: args.queries]:
        nearest(row, pixels, k=9, metric="euclidean")
    dt = time.perf_counter() - t0
    rows.append([f"nearest (euclidean, {pixels.shape[1]}-d pixels), one per call", f"{len(q)} queries",
                 f"{dt:.3f} s", f"{len(q) / dt:.0f} queries/s"])
    n_e2e = 20
    t0 = time.perf_counter()
    for i in range(n_e2e):
        neighbour_lists(model, images[i], None, layer, k=9, gallery_features=feats, gallery_pixels=pixels,
                        exclude=[i])
    dt = time.perf_counter() - t0
    rows.append(["neighbour_lists end to end (query image -> both lists)", f"{n_e2e} queries", f"{dt:.2f} s",
                 f"{n_e2e / dt:.1f} queries/s"])

    header = ["what", "work", "time", "rate"]
    text = (f"EfficientNet-Lite0 on {torch.get_num_threads()} CPU threads, {args.n} augmented images at 224 px; "
            f"`python bench/bench_inspection.py{' --quick' if args.quick else ''}`\n\n" + table(rows, header))
    sys.stdout.write("\n" + text + "\n")
    if args.readme:
        write_block("collections", text)


if __name__ == "__main__":
    main()
