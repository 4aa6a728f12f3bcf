"""Train-once networks: stylization latency beside optimization-based style transfer, training
throughput, and the triplet head's held-out verification gain over the frozen features. One run.

    .venv/bin/python bench/bench_training.py [--sizes 256,512] [--widths 16,32] [--gatys-steps 30] [--http]

- *Stylize*: one forward of the transformation network (:func:`cnnviz.training.stylize`) on
  ``astronaut`` at each long side, beside :func:`cnnviz.synthesis.style.style_transfer` (the
  optimization a ``style`` job runs: L-BFGS without line search, so one forward+backward per
  step) on the same image and size, interleaved. Latency does not depend on the weights' values,
  so the networks here are freshly initialized.
- *Training*: seconds per step of :class:`~cnnviz.training.FastStyleTrainer` (batch 4) and steps
  per second of the triplet head after its features are extracted.
- *Triplet*: 12 scikit-image photos x 3 crops (one held out per photo), 8 augmented views each;
  held-out balanced pair accuracy with the threshold calibrated on training pairs, frozen
  features vs the trained head.
- *HTTP* (``--http``): the apply route over real HTTP (uvicorn, embedded Redis, a style stored
  in it) beside the same :func:`stylize` call in-process: decode, Redis lookup, PNG encode.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402
from cnnviz.synthesis.style import style_transfer  # noqa: E402
from cnnviz.training import FastStyleTrainer, TransformNet, TripletTrainer, stylize, triplet_data  # noqa: E402

log = logging.getLogger("bench")
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera", "coins", "gravel", "brick", "grass")


def photo(name: str) -> torch.Tensor:
    import skimage.data

    a = np.array(getattr(skimage.data, name)(), copy=True)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return torch.from_numpy(a[..., :3]).permute(2, 0, 1).float() / 255


def stylize_rows(model, sizes: list[int], widths: list[int], gatys_steps: int, repeats: int) -> list[list[str]]:
    content, style = photo("astronaut"), photo("immunohistochemistry")
    rows = []
    for size in sizes:
        nets = {w: TransformNet(w, 5).eval() for w in widths}
        times: dict[int, list[float]] = {w: [] for w in widths}
        for w in widths:
            stylize(nets[w], content, size=size)  # warm-up
        for _ in range(repeats):
            for w in widths:
                t0 = time.perf_counter()
                stylize(nets[w], content, size=size)
                times[w].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        style_transfer(model, content, style, size=size, steps=gatys_steps, line_search=False)
        gatys = time.perf_counter() - t0
        for w in widths:
            ours = statistics.median(times[w])
            rows.append([str(size), str(w), f"{ours * 1000:.0f}", f"{gatys:.2f} ({gatys_steps} steps)",
                         f"{gatys / ours:.0f}x"])
    return rows


def training_rows(model, sizes: list[int], steps: int) -> list[list[str]]:
    contents = [photo(n) for n in PHOTOS[:8]]
    rows = []
    for size in sizes:
        tr = FastStyleTrainer(model, photo("immunohistochemistry"), contents, size=size, batch_size=4)
        tr.train(1)
        t0 = time.perf_counter()
        tr.train(1 + steps)
        per = (time.perf_counter() - t0) / steps
        rows.append([f"fast_style {size} px, batch 4, width 16", f"{per:.2f} s/step", f"{4 / per:.1f} crops/s"])
    return rows


def triplet_rows(model, layers: list[str], size: int, steps: int) -> list[list[str]]:
    imgs, labels = [], []
    for n in PHOTOS:
        a = photo(n)
        h, w = a.shape[1:]
        for y0, x0 in [(0, 0), (h // 4, w // 4), (0, w // 3)]:
            imgs.append(a[:, y0:y0 + h * 2 // 3, x0:x0 + w * 2 // 3])
            labels.append(n)
    rows, speed = [], []
    for layer in layers:
        t0 = time.perf_counter()
        data = triplet_data(model, imgs, labels, layer=layer, size=size, views=8, seed=0)
        feats_s = time.perf_counter() - t0
        n_views = data.train.shape[0] + data.heldout.shape[0]
        tr = TripletTrainer(data, backbone=model.name, dim=128, eval_every=steps)
        t0 = time.perf_counter()
        tr.train(steps)
        train_s = time.perf_counter() - t0
        last = tr.evals[-1]
        rows.append([layer, f"{size}", f"{tr.frozen_accuracy:.3f}", f"{last['heldout_accuracy']:.3f}",
                     f"{last['heldout_accuracy'] - tr.frozen_accuracy:+.3f}"])
        speed.append([f"triplet head on {layer} @{size}", f"{n_views / feats_s:.0f} views/s (features)",
                      f"{steps / train_s:.0f} steps/s (head)"])
    return rows, speed


def http_rows(sizes: list[int], repeats: int) -> list[list[str]]:
    """``POST /v1/styles/{style}/apply`` over real HTTP (uvicorn, embedded Redis) vs the same stylize call."""
    import io
    import json
    import socket
    import threading

    import httpx
    import uvicorn
    from PIL import Image
    from redis import Redis

    from bench.harness import interleaved
    from cnnviz.training.checkpoint import module_tensors, pack
    from core.settings import Settings
    from core.store.trained import TrainedStore
    from service.app import create_app
    from service.auth import PUBLIC
    from stack.embedded import EmbeddedRedis

    net = TransformNet(16, 5).eval()
    weights = pack(module_tensors(net), {"kind": "fast_style", "config": {"network": net.config()}})
    rows = []
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, preload_models=False)
        TrainedStore(Redis.from_url(server.url), settings.key_prefix).save(
            "style", PUBLIC, "bench", weights, model="efficientnet-lite0", job="bench", summary={})
        app = create_app(settings)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=uv.run, daemon=True)
        th.start()
        while not uv.started:
            time.sleep(0.05)
        content = photo("astronaut")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for size in sizes:
                buf = io.BytesIO()
                Image.fromarray((content.permute(1, 2, 0) * 255).byte().numpy()).resize((size, size)).save(
                    buf, "JPEG", quality=90)
                jpeg = buf.getvalue()

                def http(jpeg: bytes = jpeg, accept: str = "image/png") -> None:
                    r = client.post("/v1/styles/bench/apply", headers={"Accept": accept},
                                    files=[("image", ("c.jpg", jpeg, "image/jpeg"))], data={"params": json.dumps({})})
                    r.raise_for_status()

                def inproc(size: int = size) -> None:
                    stylize(net, content, size=size)

                times = interleaved({"png": http, "jpeg": lambda j=jpeg: http(j, "image/jpeg"), "inproc": inproc},
                                    repeats=repeats)
                for fmt in ("png", "jpeg"):
                    rows.append([f"{size} px JPEG in, {fmt.upper()} out", f"{times['inproc'] * 1000:.0f}",
                                 f"{times[fmt] * 1000:.0f}", f"{times[fmt] / times['inproc']:.2f}x"])
        uv.should_exit = True
        th.join(timeout=5)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--widths", default="16,32")
    ap.add_argument("--gatys-steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-sizes", default="128,256")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--triplet-size", type=int, default=160)
    ap.add_argument("--triplet-steps", type=int, default=300)
    ap.add_argument("--layers", default="act_head,_blocks.5")
    ap.add_argument("--http", action="store_true", help="also time POST /v1/styles/{style}/apply over HTTP")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer steps: checks the script only")
    ap.add_argument("--readme", action="store_true", help="rewrite the training (and, with --http, apply) blocks")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.widths, args.gatys_steps, args.repeats = "256", "16", 5, 2
        args.train_sizes, args.train_steps, args.triplet_steps = "128", 2, 60
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, EfficientNet-Lite0 backbone, CPU; "
              f"`python bench/bench_training.py{' --quick' if args.quick else ''}`")
    out = [header, ""]
    out.append(table(stylize_rows(model, [int(s) for s in args.sizes.split(",")],
                                  [int(w) for w in args.widths.split(",")], args.gatys_steps, args.repeats),
                     ["px (long side)", "width", "fast style ms", "optimization s", "optimization/fast"]))
    trip, speed = triplet_rows(model, args.layers.split(","), args.triplet_size, args.triplet_steps)
    out += ["", table(training_rows(model, [int(s) for s in args.train_sizes.split(",")], args.train_steps)
                      + speed, ["training", "speed", "throughput"])]
    out += ["", table(trip, ["layer", "px", "frozen held-out acc", "head held-out acc", "gain"])]
    sys.stdout.write("\n".join(out) + "\n")
    if args.readme:
        write_block("training", "\n".join(out))
    if args.http:
        apply = [header, "", table(http_rows([int(s) for s in args.sizes.split(",")], args.repeats),
                                   ["apply (width 16)", "stylize ms", "HTTP round trip ms", "HTTP/stylize"])]
        sys.stdout.write("\n".join(apply) + "\n")
        if args.readme:
            write_block("apply", "\n".join(apply))


if __name__ == "__main__":
    main()
