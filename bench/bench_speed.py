"""The speed targets in one run: every ratio the service is held to, measured side by side.

Same model (EfficientNet-Lite0 at 224 px), image (``chelsea``) and target for every row; every
group of callables runs warmed and round-robin (bench/harness.py), so machine noise hits each side
alike, and each row is reported as a ratio to its peer measured in the same run. The HTTP rows,
whose peers run in two processes, alternate warm blocks (``in_blocks``): timed call by call in
turn, each side paid for the caches and sleeping threads the other left (captum's 13 ms became
18 ms, the server's answer 19 ms became 25 ms), which flattered the ratio.

- occlusion (32 px windows, stride 16, mean fill) vs captum ``Occlusion`` at 1 and 4 per eval;
- a Grad-CAM answer over HTTP (224 px JPEG in, overlay PNG out, ``Accept: image/png``) vs captum
  ``LayerGradCam``'s compute in-process;
- predict over HTTP vs one in-process forward pass;
- guided backprop and deconvnet vs captum on a ReLU ResNet-18 (where captum applies its rule);
- 8 concurrent Grad-CAM clients vs one client in a loop, and one client with batching on vs off;
- integrated gradients at the defaults: completeness error, steps, and time vs captum at equal steps;
- the forward pass alone beside Grad-CAM (forward + partial backward), both warmed;
- Grad-CAM's overhead over a forward on ResNet-18 beside torch-cam's published 3.71 ms (RTX 2070),
  on ``--device`` (CUDA when there is one).

The API runs as real ``uvicorn`` processes (no Redis), the clients are this process's threads.

    .venv/bin/python bench/bench_speed.py [--repeats 9] [--seconds 6] [--readme]

``--readme`` rewrites the ``speed-targets`` block of docs/benchmarks.md with the table printed.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_batching import _load, serve_modes  # noqa: E402
from bench.bench_occlusion import callables as occlusion_callables  # noqa: E402
from bench.harness import correlation, in_blocks, interleaved, table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.attribution import ClassTargets, get_method  # noqa: E402
from cnnviz.models import Catalog, LoadedModel  # noqa: E402

log = logging.getLogger("bench")

MODEL_URL = "/v1/models/efficientnet-lite0"


@dataclass
class Row:
    what: str
    ours: str
    peer: str
    ratio: float
    target: str
    met: bool
    note: str = ""


def _chelsea_jpeg(side: int = 224) -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).resize((side, side), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _input(model: LoadedModel, jpeg: bytes) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    img = torch.from_numpy(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).copy()).permute(2, 0, 1)
    return model.preprocessing.batch([img.float() / 255], device=model.device)


def _ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def relu_resnet18(device: torch.device | None = None) -> tuple[LoadedModel, torch.nn.Module]:
    """Ours (frozen, channels_last) and captum's (trainable, as its users pass it) copies of one seeded ResNet-18."""
    import torchvision

    from cnnviz.models import ModelSpec, Preprocessing, default_target_layer, layer_table

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # captum's rules need out-of-place ReLUs
    net.eval()
    peer = copy.deepcopy(net)
    net.requires_grad_(False).to(memory_format=torch.channels_last)
    lt = layer_table(net, 224)
    device = device or torch.device("cpu")
    net.to(device)
    spec = ModelSpec(name="resnet18-seeded", arch="resnet18", weights="")
    model = LoadedModel(spec, net, Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                        tuple(str(i) for i in range(1000)), lt, default_target_layer(lt), device)
    return model, peer


def _ours(model: LoadedModel, x: torch.Tensor, target: int, method: str, **params) -> Callable[[], torch.Tensor]:
    m = get_method(method)
    return lambda: m.attribute(model, x, ClassTargets(indices=((target,),)), None, **params).maps[0][0]


def occlusion_rows(model: LoadedModel, x: torch.Tensor, target: int, repeats: int) -> list[Row]:
    fns = occlusion_callables(model, x, target, 32, 16)
    fns.pop("ours full forwards")
    t = interleaved(fns, repeats=max(3, repeats // 3))
    mine = t["ours incremental"]
    corr = correlation(fns["ours incremental"](), fns["captum (1 per eval)"]())
    rows = []
    for peer in ("captum (1 per eval)", "captum (4 per eval)"):
        r = t[peer] / mine
        rows.append(Row(f"occlusion 32/16 vs {peer}", _ms(mine), _ms(t[peer]), r, ">= 3x", r >= 3.0,
                        f"map corr {corr:.4f}"))
    return rows


def http_rows(base: str, jpeg: bytes, model: LoadedModel, x: torch.Tensor, target: int, repeats: int) -> list[Row]:
    import captum.attr as ca
    import httpx

    net = copy.deepcopy(model.module).requires_grad_(True)
    layer = net.get_submodule(model.default_layer)
    files = [("image", ("chelsea.jpg", jpeg, "image/jpeg"))]
    with httpx.Client(base_url=base, timeout=60) as c:
        def predict() -> None:
            c.post(MODEL_URL + "/predict", files=files).raise_for_status()

        def gradcam_png() -> None:
            r = c.post(MODEL_URL + "/explain/gradcam", files=files, headers={"Accept": "image/png"})
            r.raise_for_status()
            assert r.headers["content-type"] == "image/png"

        def forward() -> None:
            with torch.inference_mode():
                model.module(x)

        def captum_gradcam() -> None:
            ca.LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)

        fns = {"predict": predict, "forward": forward, "gradcam": gradcam_png, "captum": captum_gradcam,
               "ours gradcam": _ours(model, x, target, "gradcam")}
        t = in_blocks(fns, rounds=max(4, repeats), block=5, warmup=5)
    p, g = t["predict"] / t["forward"], t["gradcam"] / t["captum"]
    return [
        Row("predict over HTTP vs one in-process forward", _ms(t["predict"]), _ms(t["forward"]), p, "<= 1.2x",
            p <= 1.2, "224 px JPEG in, top-5 JSON out"),
        Row("Grad-CAM over HTTP vs captum LayerGradCam in-process", _ms(t["gradcam"]), _ms(t["captum"]), g,
            "<= 1.3x", g <= 1.3, "224 px JPEG in, overlay PNG out"),
        Row("forward only vs Grad-CAM engine call (both warmed)", _ms(t["forward"]), _ms(t["ours gradcam"]),
            t["forward"] / t["ours gradcam"], "< 1x", t["forward"] < t["ours gradcam"],
            "the forward must be the cheaper"),
    ]


def rectifier_rows(repeats: int) -> list[Row]:
    import captum.attr as ca

    model, peer = relu_resnet18()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = int(peer(x).argmax())
    pairs = {"guided_backprop": ca.GuidedBackprop(peer), "deconvnet": ca.Deconvolution(peer)}
    fns: dict[str, Callable[[], object]] = {}
    for method, attr in pairs.items():
        fns[f"ours {method}"] = _ours(model, x, target, method, reduce="abs-max")
        fns[f"captum {method}"] = (lambda a=attr: a.attribute(x, target=target).abs().amax(1))
    t = interleaved(fns, repeats=repeats * 2, warmup=3)
    rows = []
    for method in pairs:
        r = t[f"captum {method}"] / t[f"ours {method}"]
        corr = correlation(fns[f"ours {method}"](), fns[f"captum {method}"]())
        rows.append(Row(f"{method} vs captum, ReLU ResNet-18", _ms(t[f"ours {method}"]), _ms(t[f"captum {method}"]),
                        r, ">= 1.2x", r >= 1.2, f"map corr {corr:.4f}"))
    return rows


def concurrency_rows(bases: dict[str, str], jpeg: bytes, seconds: float, rounds: int) -> list[Row]:
    acc: dict[tuple[str, int], list[float]] = {}
    lat: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for clients, mode in ((1, "on"), (8, "on"), (1, "off")):
            n, latencies, wall = _load(bases[mode], jpeg, clients, seconds)
            a = acc.setdefault((mode, clients), [0.0, 0.0])
            a[0] += n
            a[1] += wall
            lat.setdefault((mode, clients), []).extend(latencies)
    rate = {k: v[0] / v[1] for k, v in acc.items()}
    med = {k: statistics.median(v) for k, v in lat.items()}
    p99 = {k: sorted(v)[min(len(v) - 1, round(0.99 * (len(v) - 1)))] for k, v in lat.items()}
    r8 = rate[("on", 8)] / rate[("on", 1)]
    lone = med[("on", 1)] / med[("off", 1)]
    return [
        Row("8 concurrent Grad-CAM clients vs one client, throughput", f"{rate[('on', 8)]:.1f} req/s",
            f"{rate[('on', 1)]:.1f} req/s", r8, ">= 1.5x", r8 >= 1.5,
            f"p50 {med[('on', 8)] * 1000:.0f} ms, p99 {p99[('on', 8)] * 1000:.0f} ms at 8"),
        Row("one client, batching on vs off, median latency", _ms(med[("on", 1)]), _ms(med[("off", 1)]), lone,
            "<= 1.1x", lone <= 1.1, "a lone request never waits to batch"),
    ]


def ig_rows(model: LoadedModel, x: torch.Tensor, target: int, repeats: int) -> list[Row]:
    import captum.attr as ca

    ig = get_method("integrated_gradients")
    targets = ClassTargets(indices=((target,),))
    e = ig.attribute(model, x, targets, None)
    done = e.extras["completeness"][0][0]
    steps, err = int(done["steps"]), float(done["relative_error"])
    net = copy.deepcopy(model.module).requires_grad_(True)
    black = model.preprocessing.normalize(torch.zeros_like(x))
    fns = {"ours": lambda: ig.attribute(model, x, targets, None).maps[0][0],
           "captum": lambda: ca.IntegratedGradients(net).attribute(x, baselines=black, target=target, n_steps=steps,
                                                                  internal_batch_size=4)}
    t = interleaved(fns, repeats=max(3, repeats // 3))
    r = t["captum"] / t["ours"]
    return [
        Row("integrated gradients at the defaults: completeness error", f"{err:.2%}", "", err, "<= 2%",
            err <= 0.02, f"adaptive, {steps} steps, reported in the answer"),
        Row(f"integrated gradients vs captum at equal steps ({steps})", _ms(t["ours"]), _ms(t["captum"]), r,
            ">= 1x", r >= 1.0, "captum internal_batch_size 4, as ours on a CPU"),
    ]


def overhead_rows(device: torch.device, repeats: int) -> list[Row]:
    """Grad-CAM's cost over a plain forward on ResNet-18, beside torch-cam's published 3.71 ms (RTX 2070).

    torch-cam's README reports the overhead of its CAM extractors over the forward pass on a
    ResNet-18 with an RTX 2070; the weights do not change the time, so a seeded ResNet-18 runs here.
    On a CPU the figure is context only (no target).
    """
    model, _ = relu_resnet18(device)
    x = torch.randn(1, 3, 224, 224, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> None:
        with torch.inference_mode():
            model.module(x)
        sync()

    gradcam = _ours(model, x, 0, "gradcam")

    def cam() -> None:
        gradcam()
        sync()

    t = interleaved({"forward": forward, "gradcam": cam}, repeats=repeats * 3, warmup=5)
    over = (t["gradcam"] - t["forward"]) * 1000
    gpu = device.type == "cuda"
    return [Row(f"Grad-CAM overhead over a forward, ResNet-18, {device.type}", f"{over:.2f} ms",
                "3.71 ms (torch-cam, RTX 2070)", over / 3.71, "<= 1x on a GPU" if gpu else "context",
                over <= 3.71 if gpu else True,
                f"forward {t['forward'] * 1000:.2f} ms, Grad-CAM {t['gradcam'] * 1000:.2f} ms"
                + (f", {torch.cuda.get_device_name(device)}" if gpu else ""))]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=6.0, help="per concurrency cell and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(4, len(os.sched_getaffinity(0))))
    ap.add_argument("--only", default="occlusion,http,rectifier,concurrency,ig,overhead")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="for the overhead row (the rest runs on the CPU, as the CI machine does)")
    ap.add_argument("--readme", action="store_true", help="rewrite the speed-targets block of docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    jpeg = _chelsea_jpeg()
    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    x = _input(model, jpeg)
    with torch.no_grad():
        target = int(model.module(x).argmax())
    rows: list[Row] = []
    servers: list[subprocess.Popen] = []
    bases: dict[str, str] = {}
    try:
        if only & {"http", "concurrency"}:
            modes = {"on": {}, "off": {"CNNVIZ_BATCH_MAX_IMAGES": "1"}} if "concurrency" in only else {"on": {}}
            bases = serve_modes(modes, jpeg, servers)
        if "http" in only:
            rows += http_rows(bases["on"], jpeg, model, x, target, args.repeats)
        if "occlusion" in only:
            rows += occlusion_rows(model, x, target, args.repeats)
        if "rectifier" in only:
            rows += rectifier_rows(args.repeats)
        if "ig" in only:
            rows += ig_rows(model, x, target, args.repeats)
        if "concurrency" in only:
            rows += concurrency_rows(bases, jpeg, args.seconds, args.rounds)
        if "overhead" in only:
            rows += overhead_rows(torch.device(args.device), args.repeats)
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(10)
    head = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} cores, "
            f"EfficientNet-Lite0 @224, `chelsea`; `python bench/bench_speed.py`")
    body = table([[r.what, r.ours, r.peer, f"{r.ratio:.2%}" if r.target.endswith("%") else f"{r.ratio:.2f}x",
                   r.target, "yes" if r.met else "**no**", r.note] for r in rows],
                 ["what", "ours", "peer", "ratio", "target", "met", "note"])
    text = head + "\n\n" + body
    sys.stdout.write(text + "\n")
    if args.readme:
        write_block("speed-targets", text)


if __name__ == "__main__":
    main()
