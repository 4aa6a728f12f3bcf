"""Reduced precision: engine time and map agreement of fp32 against bf16 (autocast), one run.

EfficientNet-Lite0 at 224 px, chelsea, its top-1 class, the methods called as the API calls them
(``Method.attribute(..., precision=...)``), each pair run round-robin after a warm-up
(bench/harness.py); times are medians, ``bf16/fp32`` below 1 means bf16 is faster. Agreement is
Pearson's r between the two maps. Each row also says which precision really ran (a method that
declines bf16 runs fp32: docs/precision.md).

    .venv/bin/python bench/bench_precision.py [--repeats 15] [--threads 2] [--methods gradcam,deconvnet]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import correlation, interleaved, table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.attribution import ClassTargets, Explanation, get_method  # noqa: E402
from cnnviz.models import Catalog, LoadedModel  # noqa: E402
from cnnviz.precision import offered  # noqa: E402

log = logging.getLogger("bench")

# Name -> (method, the parameters it runs with here); occlusion twice, 32 px windows at stride 16: the
# default engine (auto: incremental, which declines bf16) and full forwards.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gradcam": ("gradcam", {}),
    "deconvnet": ("deconvnet", {}),
    "occlusion-full": ("occlusion", {"engine": "full", "window": 32, "stride": 16}),
    "occlusion-auto": ("occlusion", {"window": 32, "stride": 16}),
    "saliency": ("saliency", {}),
}


def runner(model: LoadedModel, x: torch.Tensor, target: int, method: str, params: dict[str, Any],
           precision: str) -> Callable[[], Explanation]:
    m = get_method(method)

    def run() -> Explanation:
        return m.attribute(model, x, ClassTargets(indices=((target,),)), None, precision=precision, **params)

    return run


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="gradcam", help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="5 repeats: checks the script, not the figures")
    parser.add_argument("--readme", action="store_true", help="rewrite the precision block of docs/precision.md")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 5
    torch.set_num_threads(args.threads)
    import skimage.data

    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    if "bf16" not in offered(model.device):
        text = f"bf16 is not offered on this machine's {model.device.type} (offered: {offered(model.device)})"
        if args.readme:
            write_block("precision", text)
        sys.exit(text)
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float() / 255
    x = model.preprocessing.batch([img], device=model.device)
    with torch.no_grad():
        target = int(model.module(x).argmax())
    rows = []
    for case in args.methods.split(","):
        method, params = CASES[case]
        fns = {p: runner(model, x, target, method, params, p) for p in ("fp32", "bf16")}
        times = interleaved(fns, repeats=args.repeats)
        a, b = fns["fp32"](), fns["bf16"]()
        log.info("%s: %.1f ms fp32, %.1f ms bf16", case, times["fp32"] * 1000, times["bf16"] * 1000)
        rows.append([case, f"{times['fp32'] * 1000:.1f}", f"{times['bf16'] * 1000:.1f}",
                     f"{times['bf16'] / times['fp32']:.2f}", b.extras.get("precision", "?"),
                     f"{min(1.0, correlation(a.maps[0][0], b.maps[0][0], tuple(a.maps[0][0].shape))):.5f}"])
    header = ["method", "fp32 ms", "bf16 ms", "bf16/fp32", "bf16 request ran", "r(fp32, bf16)"]
    out = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, EfficientNet-Lite0 @224, chelsea, "
           f"top-1, median of {args.repeats} interleaved runs", "", table(rows, header)]
    sys.stdout.write("\n".join(out) + "\n")
    if args.readme:
        write_block("precision", "\n".join(out))


if __name__ == "__main__":
    main()
