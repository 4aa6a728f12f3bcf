"""Attribution speed beside captum and pytorch-grad-cam: same model, same image, one run.

Prints a markdown table of medians and ratios (peer time / our time: above 1 means we are
faster) and the correlation of our map with the peer's where both compute the same quantity.
captum runs on the very module cnnviz serves (frozen, channels-last: captum makes its input
require grad itself); pytorch-grad-cam needs parameters that require grad, so it gets a
trainable copy in the same channels-last layout. Integrated gradients and occlusion, whose
peers have batch settings to sweep, are rows of bench_speed.py (same batch size, same number of
forwards, the peer's best setting), not of this table.

    .venv/bin/python bench/bench_attribution.py [--repeats 5] [--only gradcam,saliency] [--http] [--readme]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import as_map, correlation, interleaved, table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.attribution import METHODS, ClassTargets, get_method  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402

log = logging.getLogger("bench")


def load(args: argparse.Namespace):
    import skimage.data

    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float() / 255
    x = model.preprocessing.batch([img], device=model.device)
    with torch.no_grad():
        target = int(model.module(x).argmax())
    return model, x, target


def ours(model, x, target, method: str, layer: str | None = None, **params) -> Callable[[], torch.Tensor]:
    m = get_method(method)

    def run() -> torch.Tensor:
        return m.attribute(model, x, ClassTargets(indices=((target,),)), layer, **params).maps[0][0]

    return run


def peers(model, x, target, layer_name: str) -> dict[str, dict[str, Callable[[], object]]]:
    """Peer implementations keyed by our method name, each a zero-argument callable returning a map."""
    import captum.attr as ca
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # captum: the served module itself (frozen, channels-last). pytorch-grad-cam needs parameters that
    # require grad: a trainable copy, same layout.
    served = model.module
    net = copy.deepcopy(model.module).requires_grad_(True).to(memory_format=torch.channels_last)
    layer = net.get_submodule(layer_name)
    slayer = served.get_submodule(layer_name)
    tgt = [ClassifierOutputTarget(target)]
    out: dict[str, dict[str, Callable[[], object]]] = {}

    def pg(cls, lay=layer, **kw):
        cam = cls(model=net, target_layers=[lay], **kw)
        return lambda: cam(input_tensor=x, targets=tgt)

    out["gradcam"] = {
        "captum LayerGradCam": lambda: ca.LayerGradCam(served, slayer).attribute(x, target=target,
                                                                                relu_attributions=True),
        "pytorch-grad-cam GradCAM": pg(pgc.GradCAM),
    }
    out["gradcampp"] = {"pytorch-grad-cam GradCAMPlusPlus": pg(pgc.GradCAMPlusPlus)}
    out["xgradcam"] = {"pytorch-grad-cam XGradCAM": pg(pgc.XGradCAM)}
    out["hirescam"] = {"pytorch-grad-cam HiResCAM": pg(pgc.HiResCAM)}
    out["layercam"] = {"pytorch-grad-cam LayerCAM": pg(pgc.LayerCAM)}
    out["eigencam"] = {"pytorch-grad-cam EigenCAM": pg(pgc.EigenCAM)}
    out["scorecam"] = {"pytorch-grad-cam ScoreCAM": pg(pgc.ScoreCAM)}
    # At the default layer (ReLU6 output, minimum 0) pytorch-grad-cam ablates by zeroing, as the paper does.
    out["ablationcam"] = {"pytorch-grad-cam AblationCAM": pg(pgc.AblationCAM)}
    out["saliency"] = {"captum Saliency": lambda: ca.Saliency(served).attribute(x.clone(), target=target, abs=True)
                       .amax(1)}
    out["guided_backprop"] = {"captum GuidedBackprop": lambda: ca.GuidedBackprop(served).attribute(x.clone(),
                                                                                                   target=target)}
    out["deconvnet"] = {"captum Deconvolution": lambda: ca.Deconvolution(served).attribute(x.clone(), target=target)}
    out["input_x_gradient"] = {"captum InputXGradient": lambda: ca.InputXGradient(served).attribute(x.clone(),
                                                                                                    target=target)}
    out["guided_gradcam"] = {"captum GuidedGradCam": lambda: ca.GuidedGradCam(served, slayer).attribute(
        x.clone(), target=target)}
    return out


# Our calls matching each peer row: (method, layer, params).
OURS: dict[str, tuple[str, str | None, dict[str, object]]] = {
    "gradcam": ("gradcam", None, {}),
    "gradcampp": ("gradcampp", None, {}),
    "xgradcam": ("xgradcam", None, {}),
    "hirescam": ("hirescam", None, {}),
    "layercam": ("layercam", None, {}),
    "eigencam": ("eigencam", None, {}),
    "scorecam": ("scorecam", None, {}),
    "ablationcam": ("ablationcam", None, {}),
    "saliency": ("saliency", None, {}),
    "guided_backprop": ("guided_backprop", None, {"reduce": "sum"}),
    "deconvnet": ("deconvnet", None, {"reduce": "sum"}),
    "input_x_gradient": ("input_x_gradient", None, {"reduce": "sum"}),
    "guided_gradcam": ("guided_gradcam", None, {"reduce": "sum"}),
}
# captum's GuidedBackprop/Deconvolution/GuidedGradCam override only nn.ReLU modules; EfficientNet-Lite
# uses ReLU6, so there they return the plain gradient: different maps, and no rule cost to pay.
DIFFERENT_QUANTITY = {"guided_backprop", "deconvnet", "guided_gradcam"}
SLOW = {"scorecam", "ablationcam"}


def bench_methods(args: argparse.Namespace) -> str:
    model, x, target = load(args)
    layer = model.default_layer
    peer_fns = peers(model, x, target, layer)
    rows = []
    with torch.no_grad():
        fwd = interleaved({"forward": lambda: model.module(x)}, repeats=args.repeats * 4, warmup=5)["forward"]
    rows.append(["forward only", f"{fwd * 1000:.1f}", "", "", "", ""])
    for key, (method, lay, params) in OURS.items():
        if args.only and key.split("@")[0] not in args.only:
            continue
        if method not in METHODS:
            log.warning("method %s not registered; skipped", method)
            continue
        mine = ours(model, x, target, method, lay, **params)
        fns = {"ours": mine, **peer_fns.get(key, {})}
        reps = max(1, args.repeats // 3) if key in SLOW else args.repeats
        times = interleaved(fns, repeats=reps)
        ref = mine()
        for peer, fn in peer_fns.get(key, {}).items():
            corr = correlation(ref, as_map(fn(), tuple(ref.shape)) if ref.shape[-1] < 64 else fn(),
                               size=tuple(x.shape[-2:]))
            shown = f"{corr:.4f}" if key not in DIFFERENT_QUANTITY else f"{corr:.2f} (peer: plain gradient)"
            # no ratio where the peer computes another quantity (a plain gradient): that would compare
            # different work; the ReLU ResNet-18 table below has those methods like for like
            ratio = f"{times[peer] / times['ours']:.2f}x" if key not in DIFFERENT_QUANTITY else "- (other work)"
            rows.append([key, f"{times['ours'] * 1000:.1f}", peer, f"{times[peer] * 1000:.1f}", ratio, shown])
        if not peer_fns.get(key):
            rows.append([key, f"{times['ours'] * 1000:.1f}", "-", "", "", ""])
    return table(rows, ["method", "ours ms", "peer", "peer ms", "peer/ours", "map corr"])


def bench_relu_net(args: argparse.Namespace) -> str:
    """Rectifier rules where captum applies them too: a ResNet-18 (nn.ReLU modules), seeded weights."""
    import captum.attr as ca

    from bench.bench_speed import relu_resnet18

    model, _ = relu_resnet18()
    net = model.module
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        target = int(net(x).argmax())
    rows = []
    # captum on the same frozen channels-last module (ours runs its folded, prepacked copy of it)
    pairs = {
        "guided_backprop": lambda: ca.GuidedBackprop(net).attribute(x.clone(), target=target).abs().amax(1),
        "deconvnet": lambda: ca.Deconvolution(net).attribute(x.clone(), target=target).abs().amax(1),
        "guided_gradcam": lambda: ca.GuidedGradCam(net, net.layer4).attribute(x.clone(), target=target).abs().amax(1),
    }
    for method, fn in pairs.items():
        mine = ours(model, x, target, method)
        times = interleaved({"ours": mine, "peer": fn}, repeats=args.repeats)
        corr = correlation(mine(), fn(), size=(224, 224))
        rows.append([method, f"{times['ours'] * 1000:.1f}", f"{times['peer'] * 1000:.1f}",
                     f"{times['peer'] / times['ours']:.2f}x", f"{corr:.4f}"])
    return "ResNet-18 (nn.ReLU; seeded random weights; timing and agreement only)\n\n" + table(
        rows, ["method", "ours ms", "captum ms", "captum/ours", "map corr"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(args: argparse.Namespace) -> str:
    """HTTP round trip of a 224 px JPEG Grad-CAM vs the same work in-process."""
    import httpx
    import skimage.data
    import uvicorn
    from PIL import Image

    from core.explaining import run_explanation
    from core.imaging import decode_image
    from core.schemas.explain import ExplainParams
    from core.settings import Settings
    from service.app import create_app

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).resize((224, 224)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    app = create_app(Settings(preload_models=True))
    model = app.state.catalog.get("efficientnet-lite0")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    params = ExplainParams()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        def http() -> None:
            r = client.post("/v1/models/efficientnet-lite0/explain/gradcam",
                            files=[("image", ("c.jpg", jpeg, "image/jpeg"))], data={"params": json.dumps({})})
            r.raise_for_status()

        def inproc() -> None:
            run_explanation(model, "gradcam", [decode_image(jpeg)], params)

        compute = ours(model, model.preprocessing.batch([torch.rand(3, 224, 224)]), 285, "gradcam")
        times = interleaved({"http": http, "inproc": inproc, "compute": compute}, repeats=args.repeats * 4)
    server.should_exit = True
    th.join(timeout=5)
    rows = [["Grad-CAM engine call", f"{times['compute'] * 1000:.1f}", ""],
            ["in-process decode+compute+render", f"{times['inproc'] * 1000:.1f}", "1.00x"],
            ["HTTP round trip (224 px JPEG)", f"{times['http'] * 1000:.1f}", f"{times['http'] / times['inproc']:.2f}x"]]
    return table(rows, ["path", "median ms", "vs in-process"])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    torch.manual_seed(0)
    np.random.seed(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", type=lambda s: set(s.split(",")), default=None)
    parser.add_argument("--http", action="store_true", help="also time the HTTP round trip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme", action="store_true", help="rewrite the attribution block of docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="one repeat, no Score-CAM/Ablation-CAM: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
        args.only = args.only or set(OURS) - SLOW
    torch.set_num_threads(args.threads)
    out = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, EfficientNet-Lite0 @224, chelsea, median of "
           f"{args.repeats} interleaved repeats after a warm-up (slow peers: fewer); "
           f"`python bench/bench_attribution.py{' --quick' if args.quick else ''}`", "",
           bench_methods(args)]
    out += ["", bench_relu_net(args)]
    if args.http:
        out += ["", bench_http(args)]
    sys.stdout.write("\n".join(out) + "\n")
    if args.readme:
        write_block("attribution", "\n".join(out))


if __name__ == "__main__":
    main()
