"""Render the example pictures shown in the README with the project's own code.

    .venv/bin/python bench/make_examples.py             # writes docs/examples/*.png
    .venv/bin/python bench/make_examples.py fast_style  # only the fast style example (~12 min on 2 cores)
    .venv/bin/python bench/make_examples.py triplet     # only the triplet head's embedding maps
    .venv/bin/python bench/make_examples.py methods     # only the method comparison (API defaults)
    .venv/bin/python bench/make_examples.py sweep       # only Grad-CAM at each block of Lite0 (a layer sweep)
    .venv/bin/python bench/make_examples.py synthesis [class_viz deepdream inversion texture style adversarial]
                                                        # only the optimization pictures (job defaults)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz.models import Catalog  # noqa: E402
from cnnviz.render import encode_png, make_grid  # noqa: E402
from cnnviz.synthesis import DeepDreamConfig, deep_dream  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "examples"
log = logging.getLogger("examples")


def tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255


# The README's method comparison, drawn by the service's own code path (core.explaining.run_explanation)
# with the API's default parameters and default rendering, except what is named here (and in the README).
METHODS_SHOWN = ("gradcam", "gradcampp", "layercam", "ablationcam", "guided_backprop", "integrated_gradients",
                 "smoothgrad", "occlusion")
METHOD_PARAMS: dict[str, dict[str, object]] = {}  # none: every method at its defaults (IG 32 steps, SmoothGrad
# 25 samples, occlusion window 32 / stride 16)
# Output options that choose what comes back, not how it is drawn: PNG for the README, no heatmap.
METHOD_OUTPUT: dict[str, object] = {"format": "png", "heatmap": False}


def method_params(name: str):  # -> ExplainParams
    from core.schemas.explain import params_model

    return params_model(name).model_validate({**METHOD_PARAMS.get(name, {}), "output": METHOD_OUTPUT})


def methods_grid(model, img: np.ndarray) -> torch.Tensor:
    """Each method's default overlay on ``img`` for its top-1 class, captioned with method and rendering."""
    import base64
    import io

    from PIL import Image

    from cnnviz.attribution import get_method
    from cnnviz.render import labelled_grid
    from core.explaining import run_explanation
    from core.imaging import decode_image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    photo = decode_image(buf.getvalue())
    tiles, captions = [], []
    for name in METHODS_SHOWN:
        e = run_explanation(model, name, [photo], method_params(name)).images[0].explanations[0]
        tiles.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(e.overlay_png or ""))))))
        extra = ", ".join(f"{k} {v}" for k, v in METHOD_PARAMS.get(name, {}).items())
        r = e.rendering
        how = f"{r.kind} · {r.colormap}" if r and r.colormap else (r.kind if r else "")
        captions.append(f"{get_method(name).title or name}{f' ({extra})' if extra else ''}\n{how}")
        log.info("%s: %s p=%.2f, rendering %s", name, e.target.label, e.target.probability or 0, how)
    return labelled_grid(tiles, captions, ncols=4, pad=6, font_px=13)


SWEEP_PARAMS: dict[str, object] = {"layers": "blocks", "output": {"figure": True, "format": "png", "heatmap": False}}
"""The README's layer sweep: Grad-CAM at every block, the figure the API answers (its captioned row)."""


def sweep_figure(model) -> bytes:
    """Grad-CAM at each block of the model on the bundled ``chelsea.jpg`` (``cnnviz samples``), as the API draws it."""
    import base64

    from core.explaining import run_explanation
    from core.imaging import decode_image
    from core.schemas.explain import params_model
    from stack.samples import _encode, _photo

    photo = decode_image(_encode(_photo("chelsea"), "JPEG"))
    res = run_explanation(model, "gradcam", [photo], params_model("gradcam").model_validate(SWEEP_PARAMS))
    e = res.images[0].explanations[0]
    log.info("sweep: %s p=%.2f over %s", e.target.label, e.target.probability or 0, ", ".join(res.layers or []))
    return base64.b64decode(e.figure_png or "")


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.permute(1, 2, 0).clamp(0, 1) * 255).round().byte()


# The parameters shown in the README next to each picture. The synthesis pictures are made with the
# job's defaults: they name only what a README example names (sizes, the class, the images),
# never a tuning knob (tests/unit/test_synthesis_defaults.py checks this and the README's example).
SYNTHESIS_EXAMPLES: dict[str, dict[str, object]] = {
    "class_viz": {"target": 285},
    "deepdream": {"size": 256},
    "inversion": {"size": 160},
    "texture": {"size": 160},
    "style": {"size": 224},
}
EXAMPLES: dict[str, dict[str, object]] = {
    **SYNTHESIS_EXAMPLES,
    "adversarial": {"target": 954, "method": "pgd", "eps": 4 / 255, "steps": 10, "size": 224},
    "fast_style": {"steps": 1000, "size": 192, "batch_size": 4, "width": 16, "blocks": 5, "lr": 2e-3,
                   "style_weight": 20.0, "tv_weight": 20.0, "seed": 0},
    "triplet_data": {"layer": "_blocks.5", "size": 160, "views": 8, "seed": 0},
    "triplet_head": {"dim": 128, "margin": 0.2, "mining": "semi-hard", "seed": 0},
}
TRIPLET_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry", "retina",
                  "camera", "coins", "gravel", "brick", "grass")
FAST_STYLE_CONTENT = ("chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "camera", "coins", "brick")


def synthesis_examples(model, only: list[str] | None = None) -> None:
    """The optimization pictures (all, or the ``only`` named ones: class_viz, deepdream, inversion,
    texture, style, adversarial), each logged with its time and its start/end scores."""
    import time

    from cnnviz.synthesis.adversarial import adversarial
    from cnnviz.synthesis.class_viz import class_visualization
    from cnnviz.synthesis.inversion import invert
    from cnnviz.synthesis.style import style_transfer
    from cnnviz.synthesis.texture import gram_texture

    cat, coffee = tensor(skimage.data.chelsea()), tensor(skimage.data.coffee())
    astronaut, stain = tensor(skimage.data.astronaut()), tensor(skimage.data.immunohistochemistry())

    def class_viz() -> None:
        viz = class_visualization(model, **EXAMPLES["class_viz"])
        log.info("class viz logit %.2f -> %.2f", viz.score_start, viz.score_end)
        (OUT / "class_viz_285.png").write_bytes(encode_png(_u8(viz.image)))

    def dream() -> None:
        d = deep_dream(model, cat, DeepDreamConfig(**EXAMPLES["deepdream"]))  # type: ignore[arg-type]
        log.info("deepdream on %s, sizes %s", d.layer, d.sizes)
        (OUT / "deepdream_chelsea.png").write_bytes(encode_png(_u8(d.image)))

    def adv() -> None:
        a = adversarial(model, cat, **EXAMPLES["adversarial"])
        log.info("adversarial %s p=%.3f linf=%.1f/255", a.top5_after[0].label, a.target_prob_after, a.linf_255)
        (OUT / "adversarial_chelsea.png").write_bytes(encode_png(make_grid(
            [_u8(a.original), _u8(a.difference), _u8(a.image)], ncols=3, pad=4)))

    def inversion() -> None:
        inv = invert(model, cat, **EXAMPLES["inversion"])
        log.info("inversion of %s: feature distance %.3f -> %.3f", inv.layer, inv.feature_distance_start,
                 inv.feature_distance_end)
        (OUT / "inversion_chelsea.png").write_bytes(encode_png(make_grid([_u8(inv.original), _u8(inv.image)],
                                                                        pad=4)))

    def texture() -> None:
        tex = gram_texture(model, coffee[:, 60:300, 120:420], **EXAMPLES["texture"])
        log.info("texture loss %.4f -> %.4f", tex.loss_start, tex.loss_end)
        (OUT / "texture_coffee.png").write_bytes(encode_png(_u8(tex.image)))

    def style() -> None:
        sty = style_transfer(model, astronaut, stain, **EXAMPLES["style"])
        log.info("style loss %.4f -> %.4f, content %.4f -> %.4f", sty.style_loss_start, sty.style_loss_end,
                 sty.content_loss_start, sty.content_loss_end)
        (OUT / "style_astronaut.png").write_bytes(encode_png(_u8(sty.image)))

    makers = {"class_viz": class_viz, "deepdream": dream, "adversarial": adv, "inversion": inversion,
              "texture": texture, "style": style}
    for name in only or list(makers):
        t0 = time.perf_counter()
        makers[name]()
        log.info("%s: %.1f s", name, time.perf_counter() - t0)


def fast_style_example(model) -> None:
    """Train a style network on eight photos (never on astronaut), then stylize astronaut in one pass."""
    import time

    from cnnviz.synthesis.style import style_transfer
    from cnnviz.synthesis.transforms import fit_long_side
    from cnnviz.training import FastStyleTrainer, stylize

    def rgb(name: str) -> torch.Tensor:
        a = np.array(getattr(skimage.data, name)(), copy=True)
        return tensor(np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3])

    astronaut, stain = rgb("astronaut"), rgb("immunohistochemistry")
    params = EXAMPLES["fast_style"]
    tr = FastStyleTrainer(model, stain, [rgb(n) for n in FAST_STYLE_CONTENT], preview=astronaut, eval_every=100,
                          **{k: v for k, v in params.items() if k != "steps"})
    t0 = time.perf_counter()
    tr.train(int(params["steps"]))
    log.info("trained %d steps in %.0f s; evals %s", tr.step, time.perf_counter() - t0, tr.evals[-1])
    t0 = time.perf_counter()
    fast = stylize(tr.net, astronaut, size=512)
    log.info("stylized 512 px in %.3f s", time.perf_counter() - t0)
    keep = stylize(tr.net, astronaut, size=512, preserve_color=True)
    half = stylize(tr.net, astronaut, size=512, strength=0.5)
    (OUT / "fast_style_astronaut.png").write_bytes(encode_png(make_grid(
        [_u8(fit_long_side(astronaut, 512)), _u8(fast), _u8(half), _u8(keep)], ncols=4, pad=4)))
    gatys = style_transfer(model, astronaut, stain, **EXAMPLES["style"]).image  # the README's style example
    x = torch.stack([fit_long_side(astronaut, 224), fit_long_side(fast, 224), gatys])
    c, f, g = (float(v) for v in tr.loss.style_loss(x))
    log.info("style loss at 224 px: content %.4f, fast style %.4f, optimization (style job defaults) %.4f", c, f, g)


def triplet_example(model) -> None:
    """The held-out views of 12 photos mapped by the frozen ``_blocks.5`` features and by a trained head."""
    from cnnviz.training import TripletTrainer, triplet_data

    imgs, labels = [], []
    for name in TRIPLET_PHOTOS:
        a = np.array(getattr(skimage.data, name)(), copy=True)
        a = tensor(np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3])
        h, w = a.shape[1:]
        for y0, x0 in [(0, 0), (h // 4, w // 4), (0, w // 3)]:
            imgs.append(a[:, y0:y0 + h * 2 // 3, x0:x0 + w * 2 // 3])
            labels.append(name)
    data = triplet_data(model, imgs, labels, **EXAMPLES["triplet_data"])
    tr = TripletTrainer(data, backbone=model.name, eval_every=100, **EXAMPLES["triplet_head"])
    tr.train(300)
    log.info("triplet head: frozen %.3f -> head %.3f held-out accuracy", tr.frozen_accuracy,
             tr.evals[-1]["heldout_accuracy"])
    (OUT / "triplet_blocks5.png").write_bytes(encode_png(_u8(tr.preview())))


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    OUT.mkdir(parents=True, exist_ok=True)
    only = {"fast_style": fast_style_example, "triplet": triplet_example,
            "sweep": lambda m: (OUT / "sweep_chelsea.png").write_bytes(sweep_figure(m)),
            "methods": lambda m: (OUT / "methods_chelsea.png").write_bytes(
                encode_png(methods_grid(m, skimage.data.chelsea()[::2, ::2])))}
    if sys.argv[1:] and sys.argv[1] in only:
        only[sys.argv[1]](Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0"))
        return
    if sys.argv[1:] and sys.argv[1] == "synthesis":
        synthesis_examples(Catalog.open(None, "cpu", None).get("efficientnet-lite0"), sys.argv[2:] or None)
        return
    model = Catalog.open(None, "cpu", None).get("efficientnet-lite0")
    chelsea = skimage.data.chelsea()[::2, ::2]
    (OUT / "methods_chelsea.png").write_bytes(encode_png(methods_grid(model, chelsea)))
    (OUT / "sweep_chelsea.png").write_bytes(sweep_figure(model))
    synthesis_examples(model)
    fast_style_example(model)
    triplet_example(model)
    log.info("wrote %s", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
