"""Style transfer speed and memory: ours beside a straightforward reference, same backbone, one run.

The reference follows the PyTorch neural-style tutorial's approach, adapted to a non-sequential
network: loss "modules" on forward hooks at the same layers (Gram divided by a*b*c*d, MSE), the
input image optimized with L-BFGS and clamped in the closure, ``backward(retain_graph=True)`` as
the tutorial's loss modules once did, weights *not* frozen (a deep copy with requires_grad=True,
so every step also computes weight gradients) and the full forward pass to the logits. Ours is
:func:`cnnviz.synthesis.style.style_transfer` (frozen weights, forward stopped after the last
needed layer, no retained graph); L-BFGS *without* line search so both do one forward+backward
per iteration.

Time is measured in this process, the two variants interleaved round by round so that machine
noise hits both alike (median seconds per iteration; each run's first iteration is not timed).
Memory is measured honestly for each device:
- CUDA: ``torch.cuda.max_memory_allocated`` after a reset, i.e. the tensors' peak.
- CPU: each variant runs in a fresh subprocess; we report the growth of the process's peak
  resident set (``ru_maxrss``) from just before the first iteration (model, copy and images
  already loaded) to the end. It counts allocator slack too, but it is the memory the machine
  actually had to provide, and a fresh process keeps variants from inheriting each other's peaks.

    .venv/bin/python bench/bench_style.py [--sizes 224,512] [--steps 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402
from cnnviz.synthesis.loop import Callbacks  # noqa: E402
from cnnviz.synthesis.style import style_layer_preset, style_transfer  # noqa: E402
from cnnviz.synthesis.transforms import fit_long_side  # noqa: E402

log = logging.getLogger("bench")


def _images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    import skimage.data

    to = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255  # noqa: E731
    return fit_long_side(to(skimage.data.chelsea()), size), fit_long_side(to(skimage.data.coffee()), size)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_ours(model, content, style, steps: int) -> list[float]:
    stamps: list[float] = []
    cb = Callbacks(progress=lambda *_: stamps.append(time.perf_counter()))
    t0 = time.perf_counter()
    style_transfer(model, content, style, size=max(content.shape[-2:]), steps=steps, optimizer="lbfgs",
                   line_search=False, callbacks=cb)
    return [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)][1:]


def run_reference(model, content, style, steps: int) -> list[float]:
    net = copy.deepcopy(model.module).requires_grad_(True)  # the tutorial does not freeze the network
    c_layers, s_layers = style_layer_preset(model)
    prep = model.preprocessing
    dev = model.device

    def gram(x: torch.Tensor) -> torch.Tensor:
        a, b, c, d = x.shape
        f = x.reshape(a * b, c * d)
        return f @ f.t() / (a * b * c * d)

    targets: dict[str, torch.Tensor] = {}
    losses: dict[str, torch.Tensor] = {}
    mode = {"capture": True}

    def make(name: str, kind: str):
        def hook(_m, _i, out):
            if mode["capture"]:
                targets[name] = (out if kind == "content" else gram(out)).detach()
            else:
                losses[name] = F.mse_loss(out if kind == "content" else gram(out), targets[name])
        return hook

    handles = [net.get_submodule(n).register_forward_hook(make(n, "content")) for n in c_layers]
    handles += [net.get_submodule(n).register_forward_hook(make(n, "style")) for n in s_layers if n not in c_layers]
    c = content.unsqueeze(0).to(dev)
    s = style.unsqueeze(0).to(dev)
    try:
        net(prep.normalize(s))
        style_targets = {n: targets[n] for n in s_layers}
        net(prep.normalize(c))
        targets.update(style_targets)  # the content pass overwrote them
        mode["capture"] = False
        img = c.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([img], max_iter=1)
        times = []

        def closure() -> torch.Tensor:
            with torch.no_grad():
                img.clamp_(0, 1)
            opt.zero_grad()
            net(prep.normalize(img))  # the whole network, to the logits
            loss = 1e6 * sum(losses[n] for n in s_layers) + sum(losses[n] for n in c_layers)
            loss.backward(retain_graph=True)
            return loss

        for _ in range(steps):
            t0 = time.perf_counter()
            opt.step(closure)
            times.append(time.perf_counter() - t0)
        return times[1:]
    finally:
        for h in handles:
            h.remove()


def child(variant: str, size: int, steps: int) -> dict:
    torch.set_num_threads(torch.get_num_threads())
    model = Catalog.open(models_file=None, device=None, default=None).get("efficientnet-lite0")
    content, style = _images(size)
    cuda = model.device.type == "cuda"
    base = _rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    fn = run_ours if variant == "ours" else run_reference
    times = fn(model, content, style, steps)
    out = {"variant": variant, "size": size, "s_per_iter": statistics.median(times), "iters": len(times),
           "rss_base_mb": base, "rss_peak_delta_mb": _rss_mb() - base, "device": str(model.device)}
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 - base_cuda
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="224,512")
    ap.add_argument("--steps", type=int, default=5, help="iterations per variant (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per size")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "SIZE"))
    ap.add_argument("--quick", action="store_true", help="224 px, 3 steps, 1 round: checks the script, not the figures")
    ap.add_argument("--readme", action="store_true", help="rewrite the style block of docs/benchmarks.md")
    args = ap.parse_args()
    if args.quick and not args.child:
        args.sizes, args.steps, args.rounds = "224", 3, 1
    if args.child:
        sys.stdout.write(json.dumps(child(args.child[0], int(args.child[1]), args.steps)) + "\n")
        return
    logging.basicConfig(level=logging.WARNING)
    model = Catalog.open(models_file=None, device=None, default=None).get("efficientnet-lite0")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        res = {}
        for variant in ("ours", "reference"):  # memory: a fresh process per variant
            proc = subprocess.run([sys.executable, __file__, "--child", variant, str(size), "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=True)
            res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        content, style = _images(size)
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        for _ in range(args.rounds):  # time: interleaved in this process
            times["ours"] += run_ours(model, content, style, args.steps)
            times["reference"] += run_reference(model, content, style, args.steps)
        for variant, ts in times.items():
            res[variant]["s_per_iter"] = statistics.median(ts)
        o, r = res["ours"], res["reference"]
        mem_key = "cuda_peak_mb" if "cuda_peak_mb" in o else "rss_peak_delta_mb"
        for v in (o, r):
            rows.append([str(size), v["variant"], v["device"], f"{v['s_per_iter']:.3f}", f"{v[mem_key]:.0f}",
                         f"{r['s_per_iter'] / o['s_per_iter']:.2f}x" if v is o else "",
                         f"{r[mem_key] / max(o[mem_key], 1e-9):.2f}x" if v is o else ""])
    mem_name = "peak MiB (CUDA)" if rows and "cuda" in rows[0][2] else "peak RSS growth MiB"
    text = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, EfficientNet-Lite0 backbone, "
            f"{args.steps} L-BFGS iterations x {args.rounds} interleaved rounds, memory from a fresh process per "
            f"variant; `python bench/bench_style.py{' --quick' if args.quick else ''}`\n\n"
            + table(rows, ["px", "variant", "device", "s / iter", mem_name, "time ref/ours", "mem ref/ours"]))
    sys.stdout.write(text + "\n")
    if args.readme:
        write_block("style", text)


if __name__ == "__main__":
    main()
