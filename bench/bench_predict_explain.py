"""Predict with ``explain`` against predict alone: what a map of each predicted class costs beside it.

The same work on both sides: EfficientNet-Lite0 from one catalog, the chelsea photo decoded once,
the core functions the predict route calls (``core.predicting.predict_images`` with the eager
forward; with explain, ``check_predict_explain`` and ``run_explanation`` of the top_k classes, raw
maps only, as the route asks), eager on both sides (no compiled forward), the same torch threads.
Each fresh process times both round-robin (bench/harness.py ``interleaved``) and reports the ratio of
medians; the table gives the median and min-max of the ratios over the processes.

    .venv/bin/python bench/bench_predict_explain.py [--procs 5] [--repeats 15] [--threads 2] [--readme]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import interleaved, table  # noqa: E402
from bench.readme import write_block  # noqa: E402

log = logging.getLogger("bench")
BLOCK = "predict-explain"
# (label, method, top_k): CAM needs no backward at all; Grad-CAM a backward through the head per class.
CASES = [("cam, top 1", "cam", 1), ("gradcam, top 1", "gradcam", 1), ("gradcam, top 5", "gradcam", 5)]
TARGET = 1.2


def child(repeats: int, threads: int) -> dict[str, dict[str, float]]:
    import io

    import skimage.data
    import torch
    from PIL import Image

    from cnnviz.models import Catalog
    from core.explaining import run_explanation
    from core.imaging import decode_image, image_to_tensor
    from core.predicting import check_predict_explain, eager_forward, predict_images, predictions_from
    from core.schemas.models import PredictParams

    torch.set_num_threads(threads)
    model = Catalog.open(None, "cpu", None).get("efficientnet-lite0")
    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "PNG")
    images = [decode_image(buf.getvalue())]
    out: dict[str, dict[str, float]] = {}
    for label, method, k in CASES:
        plain = PredictParams(top_k=k)
        with_map = PredictParams(top_k=k, explain={"method": method})
        checked = check_predict_explain(model, with_map, 1)

        def predict(p: PredictParams = plain) -> object:
            return predict_images(model, (image_to_tensor(d.image) for d in images), p, eager_forward)

        def explain(c=checked) -> object:  # noqa: ANN001 - the checked request of this case
            return predictions_from(run_explanation(model, c.method, images, c.params))

        want = [p.index for p in predict()[0][0]]
        got = [p.index for p in explain()[0][0]]
        assert want == got, (want, got)  # the same top classes: the map's forward is the prediction's
        t = interleaved({"predict": predict, "explain": explain}, repeats=repeats, warmup=2)
        out[label] = {"predict_ms": t["predict"] * 1000, "explain_ms": t["explain"] * 1000,
                      "ratio": t["explain"] / t["predict"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--readme", action="store_true", help=f"write the table into the {BLOCK} block")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(child(args.repeats, args.threads)) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = []
    for i in range(args.procs):
        res = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        log.info("process %d: %s", i + 1, {k: round(v["ratio"], 3) for k, v in runs[-1].items()})
    rows = []
    for label, _, _ in CASES:
        ratios = [r[label]["ratio"] for r in runs]
        pred = statistics.median(r[label]["predict_ms"] for r in runs)
        both = statistics.median(r[label]["explain_ms"] for r in runs)
        med = statistics.median(ratios)
        rows.append([label, f"{pred:.1f}", f"{both:.1f}", f"{med:.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                     "yes" if med <= TARGET else "no"])
    text = (f"EfficientNet-Lite0, one 451x300 photo fitted to 224 px, eager forward on both sides, "
            f"{args.threads} torch threads, {args.procs} fresh processes x {args.repeats} interleaved rounds "
            "(`bench/bench_predict_explain.py`).\n\n"
            + table(rows, ["predict with explain", "predict ms", "with maps ms", "ratio median (min-max)",
                           f"within {TARGET}x"]))
    sys.stdout.write(text + "\n")
    if args.readme:
        write_block(BLOCK, text)


if __name__ == "__main__":
    main()
