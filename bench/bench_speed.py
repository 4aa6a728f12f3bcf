"""The speed targets: every ratio the service is held to, each row read from several fresh processes.

Every run of a group is a fresh Python process (and, for the HTTP groups, fresh API processes); the
runs go group after group, round after round, so the groups interleave in time and machine noise
hits them alike. Inside a process every callable is warmed, then timed round-robin with its peers
(bench/harness.py). A row is the median over the runs with the min-max beside it, and a target is
met only when it was met in every run (bench/stats.py, which also says what the row kinds mean).

Same model (EfficientNet-Lite0 at 224 px), image (``chelsea``, a 224 px JPEG) and target (top-1)
everywhere but the rectifier rows, which need ``nn.ReLU`` modules for captum to apply its rule
(a seeded ResNet-18). Groups:

- ``http``: three API processes under uvicorn (no Redis): the default (compiled forwards, elastic
  lanes, batching), compilation off, and batching off. Predict over HTTP against the same compiled
  forward in-process (and, compilation off, against the eager forward), as overhead in ms; a
  Grad-CAM answer (a) against the same engine call in-process, (b) the engine against captum's
  ``LayerGradCam`` on the same frozen, channels-last module, eager and compiled, (c) the user's view
  (the HTTP answer against captum in-process); 8 concurrent clients against one; one client with
  batching on and off. Each API process's resident memory after the run stands beside its rows.
- ``rectifier``: guided backprop and deconvnet against captum on the same frozen, channels-last
  ResNet-18 (its served module) and on the same folded copy cnnviz runs.
- ``ig``: integrated gradients against captum at the same number of path points and the same batch
  size, over captum's ``internal_batch_size`` sweep; and the adaptive default (completeness error,
  steps) against captum's best at the default fixed steps.
- ``occlusion`` (32 px windows, stride 16, mean fill): captum's best over ``perturbations_per_eval``
  1, 4, 8, 12, 16 against our batched full forwards (like for like) and the incremental engine
  (advantage); ``occlusion-cold``: the first call of a fresh process, ours and captum's best.
- ``cuda`` (only where ``torch.cuda.is_available()``): the rows above that run in-process, on the
  GPU, and Grad-CAM's overhead over one forward on ResNet-18 beside torch-cam's published 3.71 ms
  (RTX 2070).

    .venv/bin/python bench/bench_speed.py [--runs 5] [--quick] [--only http,ig] [--readme]

``--readme`` rewrites the ``speed-targets`` block of docs/benchmarks.md with the table printed.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import correlation, in_blocks, interleaved  # noqa: E402
from bench.readme import write_block  # noqa: E402
from bench.stats import HEADER, Run, Spec, joined, mb_spread, row_cells  # noqa: E402
from cnnviz.attribution import ClassTargets, get_method  # noqa: E402
from cnnviz.models import Catalog, LoadedModel  # noqa: E402

log = logging.getLogger("bench")

MODEL_URL = "/v1/models/efficientnet-lite0"
PPE = (1, 4, 8, 12, 16)  # captum Occlusion's perturbations_per_eval swept
IG_BATCHES = (4, 16, 32)  # captum IntegratedGradients' internal_batch_size swept (32 = all points at once)
IG_STEPS = 32
RESULT = "RESULT "


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chelsea_jpeg(side: int = 224) -> bytes:
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


def lite0(jpeg: bytes, device: str = "cpu") -> tuple[LoadedModel, torch.Tensor, int]:
    model = Catalog.open(models_file=None, device=device, default=None).get("efficientnet-lite0")
    x = _input(model, jpeg)
    with torch.no_grad():
        target = int(model.module(x).argmax())
    return model, x, target


def relu_resnet18(device: torch.device | None = None) -> tuple[LoadedModel, torch.nn.Module]:
    """Ours (frozen, channels_last, as the catalog serves a model) and a trainable contiguous copy of one
    seeded ResNet-18; the bench's captum rows run on ours, the trainable copy is for callers who want
    captum as its users usually pass a model."""
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


def ours(model: LoadedModel, x: torch.Tensor, target: int, method: str, **params) -> Callable[[], torch.Tensor]:
    m = get_method(method)
    return lambda: m.attribute(model, x, ClassTargets(indices=((target,),)), None, **params).maps[0][0]


def _ms(times: dict[str, float]) -> dict[str, float]:
    return {k: v * 1000 for k, v in times.items()}


def _compiled(model: LoadedModel, threads: int):
    """The API's compiled forwards (core/compiled.py) for ``model``, built in this process and waited for."""
    import core.compiled
    from core.compiled import CompiledForwards

    core.compiled.BATCHES = (1, 4)  # what the rows below run: one image and four (the server compiles two too)
    cf = CompiledForwards(True, threads)
    cf.ensure(model)
    state = cf.wait(model, timeout=3600)
    torch.set_num_threads(threads)  # the compile thread resets the process default
    if state != "ready":
        raise RuntimeError(f"compiled forward is {state}: {cf.state(model)[1]}")
    return cf


# ---------------------------------------------------------------------------------------------- groups


def group_http(args: argparse.Namespace) -> Run:
    """Predict, Grad-CAM (a)(b)(c), concurrency and lone latency against fresh API processes."""
    import captum.attr as ca
    import httpx

    from bench.bench_batching import _load, _port, _serve, _wait_up
    from cnnviz.attribution.fast.layer_forward import using_layer_forward
    from core.predicting import eager_forward

    jpeg = chelsea_jpeg()
    servers: list[subprocess.Popen] = []
    out: Run = {}
    try:
        # Lite0 only (the other catalog models would load and sit idle): bench_memory.py has the default start-up.
        lite = {"CNNVIZ_PRELOAD_MODELS": "false"}
        modes = {"on": lite, "eager": {**lite, "CNNVIZ_COMPILE_PREDICT": "false"},
                 # batching off beside the compile-off server: the one difference is batching
                 "off": {**lite, "CNNVIZ_COMPILE_PREDICT": "false", "CNNVIZ_BATCH_MAX_IMAGES": "1"}}
        bases = {}
        for name, env in modes.items():  # started first: their compiles overlap this process's
            port = _port()
            servers.append(_serve(port, env))
            bases[name] = f"http://127.0.0.1:{port}"
        model, x, target = lite0(jpeg)
        cf = _compiled(model, args.threads)
        for base in bases.values():
            _wait_up(base, jpeg, timeout=3600)
        pids = dict(zip(modes, (s.pid for s in servers), strict=True))
        files = [("image", ("chelsea.jpg", jpeg, "image/jpeg"))]
        layer = model.module.get_submodule(model.default_layer)
        x4 = x.repeat(4, 1, 1, 1)
        gradcam = get_method("gradcam")
        targets = ClassTargets(indices=((target,),))
        with httpx.Client(base_url=bases["on"], timeout=60) as c, \
                httpx.Client(base_url=bases["eager"], timeout=60) as e:
            def predict() -> None:
                c.post(MODEL_URL + "/predict", files=files).raise_for_status()

            def predict_eager() -> None:
                e.post(MODEL_URL + "/predict", files=files).raise_for_status()

            def gradcam_png() -> None:
                r = c.post(MODEL_URL + "/explain/gradcam", files=files, headers={"Accept": "image/png"})
                r.raise_for_status()
                assert r.headers["content-type"] == "image/png"

            def forward_compiled() -> None:
                _, kind = cf.forward(model, x)
                assert kind == "compiled"

            def forward_eager() -> None:
                eager_forward(model, x)

            def forward4_compiled() -> None:
                cf.forward(model, x4)

            def forward4_eager() -> None:
                eager_forward(model, x4)

            def engine_compiled() -> None:
                with using_layer_forward(cf.layer_forward):
                    gradcam.attribute(model, x, targets, None)

            def engine_eager() -> None:
                gradcam.attribute(model, x, targets, None)

            def captum_gradcam() -> None:
                # The same frozen, channels-last module the engine hooks: captum makes the input require grad.
                ca.LayerGradCam(model.module, layer).attribute(x, target=target, relu_attributions=True)

            fns = {"http_predict": predict, "http_predict_eager": predict_eager, "http_gradcam": gradcam_png,
                   "forward_compiled": forward_compiled, "forward_eager": forward_eager,
                   "forward4_compiled": forward4_compiled, "forward4_eager": forward4_eager,
                   "engine_compiled": engine_compiled, "engine_eager": engine_eager, "captum_gradcam": captum_gradcam}
            out.update(_ms(in_blocks(fns, rounds=args.rounds, block=5, warmup=5)))
        with using_layer_forward(cf.layer_forward):
            ours_map = gradcam.attribute(model, x, targets, None).maps[0][0]
        peer_map = ca.LayerGradCam(model.module, layer).attribute(x, target=target, relu_attributions=True)
        out["gradcam_corr"] = correlation(ours_map, peer_map)
        rate: dict[tuple[str, int], float] = {}
        lat: dict[tuple[str, int], list[float]] = {}
        for _ in range(2):
            for mode, clients in (("on", 1), ("on", 8), ("eager", 1), ("off", 1)):
                n, latencies, wall = _load(bases[mode], jpeg, clients, args.seconds)
                rate[(mode, clients)] = rate.get((mode, clients), 0.0) + n / wall / 2
                lat.setdefault((mode, clients), []).extend(latencies)
        out["rate_1"], out["rate_8"] = rate[("on", 1)], rate[("on", 8)]
        out["p50_1_on"] = statistics.median(lat[("on", 1)]) * 1000
        out["p50_1_eager"] = statistics.median(lat[("eager", 1)]) * 1000
        out["p50_1_off"] = statistics.median(lat[("off", 1)]) * 1000
        out["p50_8"] = statistics.median(lat[("on", 8)]) * 1000
        out["p99_8"] = sorted(lat[("on", 8)])[round(0.99 * (len(lat[("on", 8)]) - 1))] * 1000
        for mode, pid in pids.items():
            out[f"rss_api_{mode}"] = rss_mb(pid)
        out["rss_bench"] = rss_mb(os.getpid())
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(10)
    return out


def group_rectifier(args: argparse.Namespace) -> Run:
    """Guided backprop and deconvnet: captum on the served frozen channels-last module and on our folded copy."""
    import captum.attr as ca

    from cnnviz.attribution.fast.folded import folded_module

    device = torch.device(args.device)
    model, _ = relu_resnet18(device)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        target = int(model.module(x).argmax())
    folded = folded_module(model)
    out: Run = {"folded": float(folded is not model.module)}
    classes = {"guided_backprop": ca.GuidedBackprop, "deconvnet": ca.Deconvolution}
    fns: dict[str, Callable[[], object]] = {}
    for method, cls in classes.items():
        fns[f"ours_{method}"] = ours(model, x, target, method, reduce="abs-max")
        served, on_folded = cls(model.module), cls(folded)
        fns[f"captum_{method}"] = lambda a=served: a.attribute(x.clone(), target=target).abs().amax(1)
        fns[f"captum_folded_{method}"] = lambda a=on_folded: a.attribute(x.clone(), target=target).abs().amax(1)
    out.update(_ms(interleaved(fns, repeats=args.repeats, warmup=2)))
    for method in classes:
        out[f"corr_{method}"] = correlation(fns[f"ours_{method}"](), fns[f"captum_{method}"]())
    out["rss_bench"] = rss_mb(os.getpid())
    return out


def group_ig(args: argparse.Namespace) -> Run:
    """Integrated gradients at equal points and equal batch size, over captum's batch sweep; the adaptive default."""
    import captum.attr as ca

    model, x, target = lite0(chelsea_jpeg(), args.device)
    ig = get_method("integrated_gradients")
    targets = ClassTargets(indices=((target,),))
    black = model.preprocessing.normalize(torch.zeros_like(x))
    fns: dict[str, Callable[[], object]] = {
        "ours_adaptive": lambda: ig.attribute(model, x, targets, None).maps[0][0]}
    for b in args.ig_batches:
        fns[f"ours_b{b}"] = ours(model, x, target, "integrated_gradients", steps=IG_STEPS, baseline="black",
                                 adaptive=False, batch_size=b, integration="gauss-legendre")
        # captum's IntegratedGradients on the same frozen module: it makes the scaled inputs require grad
        fns[f"captum_b{b}"] = (lambda b=b: ca.IntegratedGradients(model.module).attribute(
            x, baselines=black, target=target, n_steps=IG_STEPS, internal_batch_size=b))
    # Warm each side's kernels at its batch size with one forward + backward (a whole 32-point call
    # would double the group's time and warm nothing more), ours with one whole call (the folded copy).
    fns["ours_adaptive"]()
    for b in args.ig_batches:
        _warm(model.module, x, b, grad=True)
        fns[f"ours_b{b}"]()
    out: Run = _ms(interleaved(fns, repeats=args.slow_repeats, warmup=0))
    done = ig.attribute(model, x, targets, None).extras["completeness"][0][0]
    out["ig_adaptive_steps"], out["ig_adaptive_err"] = float(done["steps"]), float(done["relative_error"])
    best = min(args.ig_batches, key=lambda b: out[f"captum_b{b}"])
    out["ig_captum_best"], out["ig_captum_best_b"], out["ig_ours_at_captum_best"] = (
        out[f"captum_b{best}"], float(best), out[f"ours_b{best}"])
    out["ig_ours_best"] = min(out[f"ours_b{b}"] for b in args.ig_batches)
    out["rss_bench"] = rss_mb(os.getpid())
    return out


def _warm(module: torch.nn.Module, x: torch.Tensor, batch: int, grad: bool = False) -> None:
    """One forward (and backward) of ``batch`` copies of ``x``: the kernels a sweep at that batch size runs."""
    xb = x.repeat(batch, 1, 1, 1)
    if grad:
        xb.requires_grad_(True)
        module(xb).sum().backward()
    else:
        with torch.no_grad():
            module(xb)


def _occlusion_fns(model: LoadedModel, x: torch.Tensor, target: int, ppes: tuple[int, ...],
                   ) -> dict[str, Callable[[], torch.Tensor]]:
    import captum.attr as ca

    method = get_method("occlusion")
    targets = ClassTargets(indices=((target,),))

    def run(**kw) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            e = method.attribute(model, x, targets, None, window=32, stride=16, fill="mean", **kw)
            assert e.extras["engine"] == ("full" if kw.get("engine") == "full" else "incremental")
            return e.maps[0][0]
        return call

    occ = {"sliding_window_shapes": (3, 32, 32), "strides": (3, 16, 16), "baselines": torch.zeros_like(x),
           "target": target}
    fns = {"ours_incremental": run(), "ours_full": run(engine="full")}
    for p in ppes:  # the same frozen channels-last module the engine runs
        fns[f"captum_ppe{p}"] = (lambda p=p: ca.Occlusion(model.module).attribute(
            x, perturbations_per_eval=p, **occ)[0].sum(0))
    return fns


def group_occlusion(args: argparse.Namespace) -> Run:
    model, x, target = lite0(chelsea_jpeg(), args.device)
    fns = _occlusion_fns(model, x, target, args.ppe)
    # Warm: ours incremental with a whole call (it traces and plans once), every batched side with one
    # forward at its batch size (the oneDNN primitives a sweep's calls reuse), not a whole slow sweep.
    fns["ours_incremental"]()
    for b in {4, *args.ppe}:
        _warm(model.module, x, b)
    out: Run = _ms(interleaved(fns, repeats=args.slow_repeats, warmup=0))
    best = min(args.ppe, key=lambda p: out[f"captum_ppe{p}"])
    out["occ_captum_best"], out["occ_captum_best_ppe"] = out[f"captum_ppe{best}"], float(best)
    out["occ_corr"] = correlation(fns["ours_incremental"](), fns[f"captum_ppe{best}"]())
    out["rss_bench"] = rss_mb(os.getpid())
    return out


def group_occlusion_cold(args: argparse.Namespace) -> Run:
    """The first call of a fresh process (model loaded, one forward for the target already run)."""
    model, x, target = lite0(chelsea_jpeg(), args.device)
    key = args.cold
    fns = _occlusion_fns(model, x, target, (int(key[len("captum_ppe"):]),) if key.startswith("captum") else ())
    t0 = time.perf_counter()
    fns[key]()
    return {f"cold_{'captum' if key.startswith('captum') else 'ours'}": (time.perf_counter() - t0) * 1000}


def group_cuda_overhead(args: argparse.Namespace) -> Run:
    """Grad-CAM's cost over a plain forward on ResNet-18 on CUDA, beside torch-cam's published 3.71 ms
    (RTX 2070); the weights do not change the time, so a seeded ResNet-18 runs."""
    device = torch.device("cuda")
    model, _ = relu_resnet18(device)
    x = torch.randn(1, 3, 224, 224, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model.module(x)
        torch.cuda.synchronize()

    cam = ours(model, x, 0, "gradcam")

    def gradcam() -> None:
        cam()
        torch.cuda.synchronize()

    t = _ms(interleaved({"forward": forward, "gradcam": gradcam}, repeats=args.repeats * 3, warmup=5))
    return {"cuda_forward": t["forward"], "cuda_gradcam": t["gradcam"], "cuda_overhead": t["gradcam"] - t["forward"]}


GROUPS: dict[str, Callable[[argparse.Namespace], Run]] = {
    "http": group_http, "rectifier": group_rectifier, "ig": group_ig, "occlusion": group_occlusion,
    "occlusion-cold": group_occlusion_cold, "cuda-overhead": group_cuda_overhead}


# ---------------------------------------------------------------------------------------------- rows


def _ratio(a: str, b: str) -> Callable[[Run], float]:
    return lambda r: r[a] / r[b]


def _key(k: str) -> Callable[[Run], float]:
    return lambda r: r[k]


def _note_median(fmt: str, *keys: str) -> Callable[[list[Run]], str]:
    return lambda runs: fmt.format(*(statistics.median(r[k] for r in runs) for k in keys))


API_ON = mb_spread("rss_api_on", "API (Lite0, default)")
API_EAGER = mb_spread("rss_api_eager", "API (Lite0, compile off)")
API_OFF = mb_spread("rss_api_off", "API (Lite0, compile and batching off)")
BENCH = mb_spread("rss_bench", "bench process")

SPECS: list[Spec] = [
    Spec("predict over HTTP minus the same compiled forward in-process", "overhead",
         _key("http_predict"), _key("forward_compiled"), lambda r: r["http_predict"] - r["forward_compiled"], "ms",
         note="224 px JPEG in, top-5 JSON out; HTTP, decoding, preprocessing and the answer",
         memory=API_ON, needs=("http_predict",)),
    Spec("predict over HTTP minus the eager forward in-process, compilation off", "overhead",
         _key("http_predict_eager"), _key("forward_eager"),
         lambda r: r["http_predict_eager"] - r["forward_eager"], "ms",
         note="CNNVIZ_COMPILE_PREDICT=false on the server", memory=API_EAGER, needs=("http_predict_eager",)),
    Spec("forward, one image: compiled vs eager, in-process", "advantage", _key("forward_compiled"),
         _key("forward_eager"), _ratio("forward_eager", "forward_compiled"), "x",
         note="Inductor, frozen (batch norms folded); the compiled graphs cost memory: see the memory column",
         memory=joined(API_ON, API_EAGER), needs=("forward_compiled",)),
    Spec("forward, four images, per image: compiled vs eager, in-process", "advantage",
         lambda r: r["forward4_compiled"] / 4, lambda r: r["forward4_eager"] / 4,
         _ratio("forward4_eager", "forward4_compiled"), "x", needs=("forward4_compiled",)),
    Spec("Grad-CAM engine call: compiled road vs hooked eager module, in-process", "advantage",
         _key("engine_compiled"), _key("engine_eager"), _ratio("engine_eager", "engine_compiled"), "x",
         note="maps equal (tests/model/test_bench_exactness.py)", needs=("engine_compiled",)),
    Spec("(a) Grad-CAM over HTTP minus the same engine call in-process (compiled road)", "overhead",
         _key("http_gradcam"), _key("engine_compiled"), lambda r: r["http_gradcam"] - r["engine_compiled"], "ms",
         note="224 px JPEG in, overlay PNG out: HTTP, decoding, rendering and the PNG",
         memory=API_ON, needs=("http_gradcam",)),
    Spec("(b) Grad-CAM engine call (eager) vs captum LayerGradCam, same frozen channels-last module",
         "like-for-like", _key("engine_eager"), _key("captum_gradcam"), _ratio("captum_gradcam", "engine_eager"),
         "x", target=(">=", 1.0),
         note=lambda runs: f"map corr {statistics.median(r['gradcam_corr'] for r in runs):.4f}",
         memory=BENCH, needs=("engine_eager",)),
    Spec("(b) Grad-CAM engine call (compiled road) vs captum LayerGradCam, same module", "advantage",
         _key("engine_compiled"), _key("captum_gradcam"), _ratio("captum_gradcam", "engine_compiled"), "x",
         note="compiled up to the layer, eager tail: the gradient is the eager one", memory=BENCH,
         needs=("engine_compiled",)),
    Spec("(c) user's view: Grad-CAM answer over HTTP vs captum LayerGradCam in-process", "user's view",
         _key("http_gradcam"), _key("captum_gradcam"), _ratio("http_gradcam", "captum_gradcam"), "x",
         target=("<=", 1.3), note="the server also decodes, renders and writes the PNG; captum returns a tensor",
         memory=API_ON, needs=("http_gradcam",)),
    Spec("forward only vs Grad-CAM engine call (compiled, both warmed)", "context", _key("forward_compiled"),
         _key("engine_compiled"), _ratio("forward_compiled", "engine_compiled"), "x", target=("<", 1.0),
         note="the forward must be the cheaper", needs=("forward_compiled",)),
    Spec("8 concurrent Grad-CAM clients vs one client, throughput", "context", _key("rate_8"), _key("rate_1"),
         _ratio("rate_8", "rate_1"), "x", target=(">=", 1.5),
         cells="req/s", note=_note_median("p50 {0:.0f} ms, p99 {1:.0f} ms at 8 (medians over runs)", "p50_8", "p99_8"),
         memory=API_ON, needs=("rate_8",)),
    Spec("one client, batching on vs off, median latency (both compile off)", "like-for-like",
         _key("p50_1_eager"), _key("p50_1_off"), _ratio("p50_1_eager", "p50_1_off"), "x", target=("<=", 1.1),
         note="a lone request never waits to batch", memory=joined(API_EAGER, API_OFF), needs=("p50_1_eager",)),
    Spec("guided backprop vs captum GuidedBackprop on the same folded copy, ReLU ResNet-18", "like-for-like",
         _key("ours_guided_backprop"), _key("captum_folded_guided_backprop"),
         _ratio("captum_folded_guided_backprop", "ours_guided_backprop"), "x", target=(">=", 1.0),
         note="both frozen, channels-last, batch norms folded", memory=BENCH, needs=("ours_guided_backprop",)),
    Spec("guided backprop vs captum GuidedBackprop on the served module (unfolded)", "advantage",
         _key("ours_guided_backprop"), _key("captum_guided_backprop"),
         _ratio("captum_guided_backprop", "ours_guided_backprop"), "x", target=(">=", 1.2),
         note=lambda runs: "folding and prepacked convolutions; map corr "
         f"{statistics.median(r['corr_guided_backprop'] for r in runs):.4f}", memory=BENCH,
         needs=("ours_guided_backprop",)),
    Spec("deconvnet vs captum Deconvolution on the same folded copy, ReLU ResNet-18", "like-for-like",
         _key("ours_deconvnet"), _key("captum_folded_deconvnet"),
         _ratio("captum_folded_deconvnet", "ours_deconvnet"), "x", target=(">=", 1.0),
         note="both frozen, channels-last, batch norms folded", memory=BENCH, needs=("ours_deconvnet",)),
    Spec("deconvnet vs captum Deconvolution on the served module (unfolded)", "advantage",
         _key("ours_deconvnet"), _key("captum_deconvnet"), _ratio("captum_deconvnet", "ours_deconvnet"), "x",
         target=(">=", 1.2), note=lambda runs: "folding and prepacked convolutions; map corr "
         f"{statistics.median(r['corr_deconvnet'] for r in runs):.4f}", memory=BENCH, needs=("ours_deconvnet",)),
    Spec(f"integrated gradients vs captum, {IG_STEPS} points, same batch size (captum's best)", "like-for-like",
         _key("ig_ours_at_captum_best"), _key("ig_captum_best"), _ratio("ig_captum_best", "ig_ours_at_captum_best"),
         "x",
         target=(">=", 1.0), note=lambda runs: "captum's internal_batch_size swept over "
         f"{', '.join(map(str, IG_BATCHES))}; best {statistics.median(r['ig_captum_best_b'] for r in runs):.0f} "
         "(median over runs); ours at the same batch size, Gauss-Legendre points", memory=BENCH,
         needs=("ig_captum_best_b",), block="speed-ig"),
    Spec("integrated gradients at the defaults: completeness error", "context", None, None,
         _key("ig_adaptive_err"), "%", target=("<=", 0.02),
         note=_note_median("adaptive Gauss-Kronrod, {0:.0f} points (median), reported in the answer",
                           "ig_adaptive_steps"), needs=("ig_adaptive_err",), block="speed-ig"),
    Spec(f"integrated gradients, adaptive default vs captum's best at {IG_STEPS} points", "advantage",
         _key("ours_adaptive"), _key("ig_captum_best"), _ratio("ig_captum_best", "ours_adaptive"), "x",
         note="fewer forwards for a 2 % completeness error", memory=BENCH, needs=("ours_adaptive",), block="speed-ig"),
    Spec("occlusion 32/16, batched full forwards vs captum Occlusion at its best", "like-for-like",
         _key("ours_full"), _key("occ_captum_best"), _ratio("occ_captum_best", "ours_full"), "x",
         note=lambda runs: "captum's perturbations_per_eval swept over " + ", ".join(map(str, PPE))
         + f"; best {statistics.median(r['occ_captum_best_ppe'] for r in runs):.0f} (median over runs);"
         " ours 4 per batch",
         memory=BENCH, needs=("ours_full",)),
    Spec("occlusion 32/16, incremental engine vs captum Occlusion at its best", "advantage",
         _key("ours_incremental"), _key("occ_captum_best"), _ratio("occ_captum_best", "ours_incremental"), "x",
         target=(">=", 3.0), note=lambda runs: "exact (tests/model/test_bench_exactness.py); map corr "
         f"{statistics.median(r['occ_corr'] for r in runs):.4f}", memory=BENCH, needs=("ours_incremental",)),
    Spec("occlusion 32/16 cold: first call of a fresh process, incremental vs captum at its best", "advantage",
         _key("cold_ours"), _key("cold_captum"), _ratio("cold_captum", "cold_ours"), "x",
         note="includes tracing and planning the incremental engine", needs=("cold_ours", "cold_captum")),
    Spec("CUDA: Grad-CAM overhead over a forward, ResNet-18", "context", _key("cuda_gradcam"), _key("cuda_forward"),
         _key("cuda_overhead"), "ms", target=("<=", 3.71),
         note="beside torch-cam's published 3.71 ms (RTX 2070)", needs=("cuda_overhead",)),
]


def child(args: argparse.Namespace) -> None:
    import warnings

    warnings.filterwarnings("ignore", module="captum")  # "did not already require gradients": it sets it itself
    torch.set_num_threads(args.threads)
    result = GROUPS[args.child](args)
    sys.stdout.write(RESULT + json.dumps(result) + "\n")


def _spawn(group: str, args: argparse.Namespace, extra: list[str] | None = None) -> Run:
    cmd = [sys.executable, __file__, "--child", group, "--threads", str(args.threads), "--device", args.device,
           "--repeats", str(args.repeats), "--slow-repeats", str(args.slow_repeats), "--rounds", str(args.rounds),
           "--seconds", str(args.seconds), "--ppe", ",".join(map(str, args.ppe)),
           "--ig-batches", ",".join(map(str, args.ig_batches)), *(extra or [])]
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    log.info("  %s %s: %.0f s", group, " ".join(extra or []), time.time() - t0)
    return json.loads(lines[-1][len(RESULT):])


def merge_run(run: Run, part: Run, group: str) -> None:
    """Add one group's figures to a run. Each group names its own keys: two groups writing the same key
    once made the IG rows read the occlusion group's captum time. The bench process's resident memory is
    the one key every in-process group writes; the run keeps the largest."""
    for key, value in part.items():
        if key == "rss_bench":
            run[key] = max(value, run.get(key, value))
        elif key in run:
            raise RuntimeError(f"group {group} writes {key!r}, which another group of the run wrote already")
        else:
            run[key] = value


# The blocks of docs/benchmarks.md and the groups each one needs: a block is written only when all of
# its groups ran, so `--only ig --readme` rewrites the integrated-gradients rows and nothing else.
DEFAULT_ONLY = "http,rectifier,ig,occlusion"
BLOCKS: dict[str, tuple[str, ...]] = {"speed-targets": ("http", "rectifier", "occlusion"), "speed-ig": ("ig",)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per group")
    ap.add_argument("--quick", action="store_true", help="1 run and fewer repeats: checks the script, not the figures")
    ap.add_argument("--repeats", type=int, default=9, help="round-robin repeats of a fast group, per process")
    ap.add_argument("--slow-repeats", type=int, default=1,
                    help="timed round-robin repeats of a slow group (IG, occlusion), per process, after a warm-up")
    ap.add_argument("--rounds", type=int, default=4, help="warm blocks per side in the HTTP group")
    ap.add_argument("--seconds", type=float, default=3.0, help="per concurrency cell and round (two rounds)")
    ap.add_argument("--threads", type=int, default=min(4, len(os.sched_getaffinity(0))))
    ap.add_argument("--only", default=DEFAULT_ONLY)
    ap.add_argument("--device", default="cpu", help="cpu; the cuda rows run by themselves where CUDA is available")
    ap.add_argument("--ppe", type=lambda s: tuple(int(v) for v in s.split(",")), default=PPE)
    ap.add_argument("--ig-batches", type=lambda s: tuple(int(v) for v in s.split(",")), default=IG_BATCHES)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cold", help=argparse.SUPPRESS)
    ap.add_argument("--readme", action="store_true", help="rewrite the speed-targets block of docs/benchmarks.md")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.runs, args.repeats, args.slow_repeats, args.rounds, args.seconds = 1, 3, 1, 2, 2.0
    only = [g for g in args.only.split(",") if g]
    t_start = time.time()
    runs: list[Run] = []
    cuda_runs: list[Run] = []
    for i in range(args.runs):
        log.info("run %d of %d", i + 1, args.runs)
        run: Run = {}
        for group in only:
            merge_run(run, _spawn(group, args), group)
            if group == "occlusion":
                best = f"captum_ppe{int(run['occ_captum_best_ppe'])}"
                for key in ((best, "ours_incremental") if i % 2 else ("ours_incremental", best)):
                    merge_run(run, _spawn("occlusion-cold", args, ["--cold", key]), "occlusion-cold")
        runs.append(run)
        if torch.cuda.is_available():
            cuda = argparse.Namespace(**{**vars(args), "device": "cuda"})
            cuda_run: Run = {}
            for group in ("cuda-overhead", *(g for g in only if g in ("rectifier", "ig", "occlusion"))):
                merge_run(cuda_run, _spawn(group, cuda), group)
            cuda_runs.append(cuda_run)
    from bench.harness import table

    chosen = "" if args.only == DEFAULT_ONLY else f" --only {args.only}"

    head = (f"torch {torch.__version__}, {args.threads} threads, {len(os.sched_getaffinity(0))} cores, "
            f"EfficientNet-Lite0 @224 (rectifier rows: seeded ReLU ResNet-18), `chelsea`; "
            f"{args.runs} fresh processes per group, interleaved; `python bench/bench_speed.py"
            f"{' --quick' if args.quick else ''}{chosen}` ({(time.time() - t_start) / 60:.0f} min). "
            + ("CUDA rows from " + torch.cuda.get_device_name(0) + "." if cuda_runs else
               "No GPU was available: no GPU figure exists yet (the CUDA rows run where one is)."))
    for block, groups in BLOCKS.items():
        if not set(groups) <= set(only):
            continue
        rows = [c for c in (row_cells(s, runs) for s in SPECS if s.block == block) if c]
        text = head + "\n\n" + table(rows, HEADER)
        cuda_rows = [c for c in (row_cells(s, cuda_runs) for s in SPECS if s.block == block) if c]
        if cuda_rows:
            text += (f"\n\nOn CUDA ({torch.cuda.get_device_name(0)}), the in-process groups:\n\n"
                     + table(cuda_rows, HEADER))
        sys.stdout.write(text + "\n\n")
        if args.readme:
            write_block(block, text)


if __name__ == "__main__":
    main()
