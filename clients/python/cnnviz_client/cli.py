"""The ``cnnviz`` command line, on :class:`cnnviz_client.Client`.

    cnnviz predict cat.jpg --top-k 3
    cnnviz explain cat.jpg --method gradcam --top-k 2 --out overlay.png
    cnnviz explain scene.png --model scenes-segmenter --method gradcam --region 2 --region-box 10,10,40,40
    cnnviz job deepdream cat.jpg --param layer=_blocks.10 --param steps=8 --wait --out dream.png
    ID=$(cnnviz job class_viz --param target=285); cnnviz result $ID --wait 600 --out viz.png
    cnnviz jobs | cnnviz status ID | cnnviz cancel ID | cnnviz models | cnnviz methods

The service is ``--url`` or ``$CNNVIZ_URL`` (default http://127.0.0.1:8000), the key
``$CNNVIZ_API_KEY`` (or ``--api-key``); these global options go before or after the command.
``serve`` and ``worker`` belong to the service: they are handed to the service's own command line
when the service is installed beside the client. Problems are written to stderr as ``title: detail``
with the help the service gave (the names it suggests, where to look them up), exit status 1; usage
errors exit with 2. Output cut short by the reader (``cnnviz jobs | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from . import __version__
from ._saving import SERVICE_FORMATS, format_of_name
from ._trust import trust_table
from .client import Client
from .errors import CnnvizError, JobFailedError, JobTimeoutError, ProblemError
from .types import ExplainResult, JobStatus, NdExplainResult, NdPredictResult

__all__ = ["command_of", "main", "parse_param", "problem_text"]

log = logging.getLogger("cnnviz_client.cli")

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_BROKEN_PIPE = 128 + 13  # as a process ended by SIGPIPE: the reader stopped reading (``| head``)
SERVICE_COMMANDS = ("serve", "worker", "samples")
SERVICE_MODULES = ("stack.cli", "service.cli")  # where the service's command line has lived, newest first
# Global options that take a value: needed to find the subcommand before parsing (for the hand-over).
VALUE_OPTIONS = ("--url", "--api-key", "--timeout", "--retries", "--log-level")


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand of ``argv`` (the first positional after the global options), or None."""
    it = iter(argv)
    for tok in it:
        if tok == "--":
            return next(it, None)
        if tok.startswith("-"):
            if tok in VALUE_OPTIONS:
                next(it, None)
            continue
        return tok
    return None


def parse_param(text: str) -> tuple[list[str], Any]:
    """``k=v`` -> (key path, value): v as JSON when it parses, else the string; ``a.b=1`` nests."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def params_from(pairs: Sequence[tuple[list[str], Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in pairs or []:
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[path[-1]] = value
    return out


def _image(arg: str) -> Any:
    """A path, or ``-`` for the bytes on stdin."""
    if arg == "-":
        return sys.stdin.buffer.read()
    if not Path(arg).is_file():
        raise CnnvizError(f"no such image file: {arg}")
    return arg


def _write(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _dump(obj: Any) -> None:
    _write(json.dumps(obj, indent=2, default=str))


def _pct(st: JobStatus) -> str:
    p = st.progress
    frac = 1.0 if st.succeeded else (p.fraction or 0.0)
    return f"{frac * 100:3.0f}%"


def _status_line(st: JobStatus) -> str:
    line = f"{st.id}  {st.type:<12} {st.status:<9} {_pct(st)}"
    if st.progress.total:
        line += f"  {st.progress.step}/{st.progress.total}"
    if st.status == "queued" and st.queue_position is not None:
        line += f"  queue position {st.queue_position}"
    if st.error:
        line += f"  {st.error.type}: {st.error.detail}"
    return line


def _numbered(path: Path, i: int, t: int) -> Path:
    return path.with_name(f"{path.stem}-{i}-{t}{path.suffix or '.png'}")


# ---- commands --------------------------------------------------------------------------------------


def cmd_models(c: Client, a: argparse.Namespace) -> int:
    models = c.models()
    if a.json:
        _dump([m.raw for m in models])
        return 0
    for m in models:
        mark = "  (default)" if m.default else ""
        _write(f"{m.name:<24} {m.arch:<24} {m.input_size:>4} px  {m.num_labels} labels{mark}")
    return 0


def cmd_methods(c: Client, a: argparse.Namespace) -> int:
    ml = c.methods()
    items = [m for m in ml if a.kind is None or m.kind == a.kind]
    if a.json:
        _dump([m.__dict__ for m in items])
        return 0
    for m in items:
        where = "inline" if m.inline else "job"
        _write(f"{m.name:<22} {m.kind:<8} {m.family:<12} {where:<7} cost {m.cost_hint:g}  {m.title}")
    _write(f"inline budget: {ml.inline_budget:g} {ml.cost_unit}")
    return 0


def cmd_predict(c: Client, a: argparse.Namespace) -> int:
    params = params_from(a.param)
    if a.top_k is not None:
        params["top_k"] = a.top_k
    if a.masks:
        params["masks"] = True
    if a.score_threshold is not None:
        params["score_threshold"] = a.score_threshold
    res = c.predict([_image(p) for p in a.images], a.model, params=params)
    saved = []
    if a.label_map:
        out = Path(a.label_map)
        for im in res.images:
            if im.segmentation is not None:
                path = out if not saved else out.with_name(f"{out.stem}-{im.index}{out.suffix}")
                saved.append(im.segmentation.save(path))
    if a.json:
        _dump(res.raw)
        return 0
    if isinstance(res, NdPredictResult):  # signals or volumes: one entry per file
        for name, entry in zip(a.images, res.inputs, strict=False):
            shape = "x".join(str(v) for v in entry["shape"])
            _write(f"{name} ({entry['kind']} {shape}, {entry['format']}, {res.model})")
            for rank, p in enumerate(entry["predictions"], 1):
                _write(f"  {rank:>2}. {p['probability']:7.4f}  {p['index']:>5}  {p['label']}")
        return 0
    for name, im in zip(a.images, res.images, strict=False):
        _write(f"{name} ({im.width}x{im.height}, {res.model})")
        for rank, p in enumerate(im.predictions, 1):
            _write(f"  {rank:>2}. {p.probability:7.4f}  {p.index:>5}  {p.label}")
        if im.segmentation is not None:
            for ca in im.segmentation.classes:
                _write(f"  {ca.fraction:7.2%}  {ca.pixels:>8} px  {ca.index:>5}  {ca.label}")
        for d in im.detections or []:
            x0, y0, x1, y1 = d.box
            _write(f"  #{d.index:<3} {d.score:7.4f}  {d.label:<16} ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f})")
    for path in saved:
        _write(f"label map: {path}")
    return 0


def _numbers(text: str, count: int | None, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v]
    except ValueError:
        raise CnnvizError(f"{what} takes numbers separated by commas, got {text!r}") from None
    if (count is not None and len(values) != count) or (count is None and (len(values) < 6 or len(values) % 2)):
        raise CnnvizError(f"{what} takes {count or 'an even number (at least 6) of'} numbers, got {text!r}")
    return values


def region_from(a: argparse.Namespace) -> dict[str, Any] | None:
    """The region target of ``--region [CLASS]``, ``--region-box`` and ``--region-polygon`` (None: no region)."""
    if a.region is None and a.region_box is None and a.region_polygon is None:
        return None
    out: dict[str, Any] = {}
    if a.region is not None and a.region >= 0:
        out["target"] = a.region
    if a.region_box is not None:
        out["box"] = [int(round(v)) for v in _numbers(a.region_box, 4, "--region-box")]
    if a.region_polygon is not None:
        flat = _numbers(a.region_polygon, None, "--region-polygon")
        out["polygon"] = [[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)]
    return out


def cmd_explain(c: Client, a: argparse.Namespace) -> int:
    params = params_from(a.param)
    region = region_from(a)
    if region is not None:  # a segmenter's class and region; --top-k counts its classes
        if a.target is not None:
            raise CnnvizError("--target names a classifier's class; give a segmenter's class as --region CLASS")
        if a.top_k is not None:
            region["top_k"] = a.top_k
        params["region"] = region
        a.top_k = None
    for key in ("target", "top_k", "layer"):
        value = getattr(a, key)
        if value is not None:
            params[key] = value
    if a.layers is not None:  # a layer sweep: "blocks", or names separated by commas
        params["layers"] = "blocks" if a.layers == "blocks" else [n for n in a.layers.split(",") if n]
        if a.out:  # the file gets the captioned row of every layer's overlay
            output = params.setdefault("output", {})
            if isinstance(output, dict):
                output.setdefault("figure", True)
    if a.box is not None:
        params["box"] = {"index": a.box}
    elif a.box_top_k is not None:
        params["box"] = {"top_k": a.box_top_k}
    if a.out:  # ask for the format the file name asks for (the service's default is JPEG); PNG for others
        output = params.setdefault("output", {})
        if isinstance(output, dict):
            wanted = format_of_name(a.out)
            output.setdefault("format", wanted if wanted in SERVICE_FORMATS else "png")
    res = c.explain([_image(p) for p in a.images], a.method, a.model, respond_async=a.respond_async, params=params)
    if isinstance(res, NdExplainResult):
        return _report_nd(res, a)
    saved = _save_explanations(res, Path(a.out)) if a.out else []
    if a.json:
        raw = dict(res.raw)
        if res.job_id:
            raw["job_id"] = res.job_id
        _dump(raw)
        return 0
    via = f" (job {res.job_id})" if res.job_id else ""
    where = f"layers {', '.join(res.layers)}" if res.layers else f"layer {res.layer}"
    _write(f"{res.method} on {res.model}, {where}{via}")
    for im in res.images:
        _write(f"image {im.index} ({im.width}x{im.height}):")
        for e in im.explanations:
            t = e.target
            prob = f"p={t.probability:.4f} " if t.probability is not None else ""
            where = (f" box #{t.detection if t.detection is not None else 'ref'} "
                     f"({', '.join(f'{v:.1f}' for v in t.box)})" if t.box else "")
            _write(f"  {t.label or t.kind} ({t.index}){where}  {prob}score={t.score:.4g}  "
                   f"map {e.map.shape[0]}x{e.map.shape[1]} [{e.map.min:.4g}, {e.map.max:.4g}]")
            for lm in e.layers or []:
                _write(f"    {lm.layer:<12} map {lm.shape[0]}x{lm.shape[1]} [{lm.map.min:.4g}, {lm.map.max:.4g}]")
            if e.region:
                r = e.region
                _write(f"    region ({r.get('source')}): bounding box {tuple(r.get('box') or ())}, {r.get('area')} px "
                       f"({r.get('fraction', 0):.1%} of the image, {r.get('predicted_fraction', 0):.0%} predicted "
                       f"{t.label or t.index})")
            if e.faithfulness and e.faithfulness.get("energy_in_region") is not None:
                f = e.faithfulness
                _write(f"    pointing game: {'hit' if f.get('pointing_hit') else 'miss'}, energy in region "
                       f"{f['energy_in_region']:.1%}")
    for w in res.warnings:
        _write(f"warning: {w}")
    for path in saved:
        _write(f"overlay: {path}")
    return 0


def _report_nd(res: NdExplainResult, a: argparse.Namespace) -> int:
    """A signal or volume answer: each map's peak, and its first picture saved to ``--out``."""
    if a.out:
        path = res.save(Path(a.out))
    if a.json:
        _dump(res.raw)
        return 0
    _write(f"{res.method} on {res.model} ({res.input_kind}s), layer {res.layer}")
    for i, exps in enumerate(res.inputs):
        for e in exps:
            t = e.target
            prob = f"p={t.probability:.4f} " if t.probability is not None else ""
            _write(f"  input {i}: {t.label or t.kind} ({t.index})  {prob}map on {'x'.join(map(str, e.shape))},"
                   f" peak at {e.peak}")
    for w in res.warnings:
        _write(f"warning: {w}")
    if a.out:
        _write(f"picture: {path}")
    return 0


def _save_explanations(res: ExplainResult, out: Path) -> list[str]:
    """The first overlay to ``out``; any further ones beside it as ``stem-IMAGE-TARGET.png``.

    A layer sweep saves each target's figure instead: the captioned row of every layer's overlay."""
    saved = []
    for im in res.images:
        for t, e in enumerate(im.explanations):
            which = "figure" if e.layers and e.figure is not None else "overlay"
            if (e.figure if which == "figure" else e.overlay) is None:
                continue
            path = out if not saved else _numbered(out, im.index, t)
            saved.append(e.save(path, which))
    if not saved:
        raise CnnvizError("the answer has no overlay to save (output.overlay was false?)")
    return saved


def cmd_job(c: Client, a: argparse.Namespace) -> int:
    job = c.submit(a.type, [_image(p) for p in a.images], a.model, params=params_from(a.param),
                   idempotency_key=a.idempotency_key)
    if not (a.wait or a.out):  # the bare id, for scripts: ID=$(cnnviz job ...); --json for the record
        if a.json:
            _dump(job.last_status.raw if job.last_status else {"id": job.id})
        else:
            _write(job.id)
        return 0
    st = job.wait(timeout=a.wait_timeout, progress=not a.no_progress)
    if a.json:
        _dump(st.raw)
    else:
        _write(_status_line(st))
    if not st.succeeded:
        raise JobFailedError(st)
    if a.out:
        path = job.result().save(a.out)
        if not a.json:
            _write(f"result: {path}")
    return 0


def cmd_jobs(c: Client, a: argparse.Namespace) -> int:
    jobs = c.jobs(a.status, a.limit)
    if a.json:
        _dump([j.raw for j in jobs])
        return 0
    for st in jobs:
        _write(f"{_status_line(st)}  {st.created_at or ''}")
    return 0


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    st = c.job(a.id).status(wait=a.wait or 0.0)
    if a.json:
        _dump(st.raw)
        return 0
    _write(_status_line(st))
    if st.progress.stage or st.progress.message:
        _write(f"  stage: {st.progress.stage}  {st.progress.message or ''}".rstrip())
    if st.progress.objective is not None:
        _write(f"  objective: {st.progress.objective:.6g}")
    for art in st.artifacts:
        _write(f"  artifact: {art.name}  {art.media_type or ''}".rstrip())
    return 0


def cmd_result(c: Client, a: argparse.Namespace) -> int:
    job = c.job(a.id)
    if a.wait is not None:
        try:
            st = job.wait(timeout=a.wait)
        except JobTimeoutError as exc:  # the job goes on: say so, and how to wait longer
            raise CnnvizError(f"job {a.id} is still {exc.job.status} ({_pct(exc.job).strip()}) after {a.wait:g}s; "
                              f"wait longer: cnnviz result {a.id} --wait SECONDS") from exc
        if not st.succeeded and not a.artifact:
            raise JobFailedError(st)
    try:
        art = job.artifact(a.artifact) if a.artifact else job.result()
    except ProblemError as exc:
        if exc.slug == "job-not-succeeded" and exc.extra.get("status_of_job") in ("queued", "running"):
            raise CnnvizError(f"job {a.id} is {exc.extra['status_of_job']}, not finished: no result yet; wait for "
                              f"it with: cnnviz result {a.id} --wait SECONDS") from exc
        raise
    if a.out:
        _write(f"{art.name}: {art.save(a.out)}")
    elif art.is_json:
        _dump(art.json())
    else:
        raise CnnvizError(f"the {art.name} is {art.media_type}; give --out FILE to save it")
    return 0


def _method_entry(text: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:{json params}`` (``gradcam:{"layer": "_blocks.15"}``)."""
    name, sep, rest = text.partition(":")
    if not sep:
        return {"method": name}
    try:
        params = json.loads(rest)
    except json.JSONDecodeError as exc:
        raise CnnvizError(f"--method {text!r}: the parameters after ':' must be a JSON object ({exc})") from exc
    if not isinstance(params, dict):
        raise CnnvizError(f"--method {text!r}: the parameters after ':' must be a JSON object")
    return {"method": name, "params": params}


def cmd_evaluate(c: Client, a: argparse.Namespace) -> int:
    """Evaluate methods on a collection (an id, or a ZIP uploaded first with --labels FILE.json)."""
    source = Path(a.source)
    if source.exists():
        meta: dict[str, Any] = json.loads(Path(a.labels).read_text()) if a.labels else {}
        col = c.create_collection(zip=source.read_bytes() if source.suffix.lower() == ".zip" else None,
                                  images=None if source.suffix.lower() == ".zip" else [source],
                                  labels=meta.get("labels"), boxes=meta.get("boxes"))
        cid = col.id
        if not a.json:
            _write(f"collection {cid}: {col.count} images")
    else:
        cid = a.source
    params = params_from(a.param)
    if a.klass:
        classes = {}
        for item in a.klass:
            label, sep, cls = item.partition("=")
            if not sep:
                raise CnnvizError(f"--class {item!r}: give LABEL=CLASS (a class label or index)")
            classes[label] = int(cls) if cls.isdigit() else cls
        params["classes"] = classes
    job = c.evaluate(cid, [_method_entry(m) for m in a.method], a.model, params=params)
    st = job.wait(timeout=a.wait_timeout, progress=not a.no_progress)
    if not st.succeeded:
        raise JobFailedError(st)
    result = job.result().json()
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        for name in ("grid.png", "curves.png"):
            if any(art.name == name for art in st.artifacts):
                job.artifact(name).save(out / name)
    if a.json:
        _dump(result)
        return 0
    _write(f"evaluate {job.id} on {result['model']}: {result['count']} images at {result['input_size']} px")
    _write(trust_table(result))
    if a.out:
        _write(f"saved: {a.out}/result.json, grid.png, curves.png")
    return 0


def cmd_cancel(c: Client, a: argparse.Namespace) -> int:
    st = c.job(a.id).cancel()
    if a.json:
        _dump(st.raw)
    else:
        _write(f"{st.id} {st.status}{' (cancel requested)' if st.cancel_requested and st.status == 'running' else ''}")
    return 0


# ---- parser and entry point -----------------------------------------------------------------------------


def _global_options(p: argparse.ArgumentParser, with_defaults: bool) -> None:
    """The options of every command: on the main parser with their defaults, on each command's without."""

    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    group = p.add_argument_group("global options")
    group.add_argument("--url", default=default(os.environ.get("CNNVIZ_URL") or DEFAULT_URL),
                       help=f"service URL (default $CNNVIZ_URL or {DEFAULT_URL})")
    group.add_argument("--api-key", default=default(os.environ.get("CNNVIZ_API_KEY")),
                       help="API key (default $CNNVIZ_API_KEY)")
    group.add_argument("--timeout", type=float, default=default(60.0), help="HTTP timeout in seconds (default 60)")
    group.add_argument("--retries", type=int, default=default(3), help="retries on 503/429 and connection failures")
    group.add_argument("--log-level", default=default("WARNING"), help="client log level on stderr (default WARNING)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the service's JSON instead of a summary")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnviz", description="Explain what a CNN sees: the cnnviz service from the "
                                "command line.", epilog="serve and worker run the service itself (when installed). "
                                "The options above go before or after the command.")
    _global_options(p, with_defaults=True)
    p.add_argument("--version", action="version", version=f"cnnviz-client {__version__}")
    # The same options on every command, without defaults (SUPPRESS): given after the command they set
    # the value, absent they leave the one parsed before it (or the default) alone.
    after = argparse.ArgumentParser(add_help=False)
    _global_options(after, with_defaults=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[after])
        sp.set_defaults(func=func)
        return sp

    def model_and_params(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=None, help="model name (default: the service's default)")
        sp.add_argument("--param", action="append", type=parse_param, metavar="K=V",
                        help="a parameter; V is JSON when it parses, else a string; a.b=V nests (repeatable)")

    sp = add("predict", cmd_predict, "top-k classes of images (a detector: its boxes)")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--top-k", type=int, default=None)
    sp.add_argument("--masks", action="store_true", help="a segmenter: also one mask per predicted class")
    sp.add_argument("--label-map", default=None, metavar="PNG",
                    help="a segmenter: save the label map here (more images: beside it, numbered)")
    sp.add_argument("--score-threshold", type=float, default=None, help="a detector's boxes scoring below are left out")
    model_and_params(sp)

    sp = add("explain", cmd_explain, "explanation maps of images (Grad-CAM and the rest)")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--method", required=True, help="e.g. gradcam, layercam, integrated_gradients (see methods)")
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--target", type=int, default=None, help="class index to explain")
    group.add_argument("--top-k", type=int, default=None, help="explain the k best classes")
    group.add_argument("--box", type=int, action="append", default=None, metavar="RANK",
                       help="a detector's box to explain, by its rank in predict's answer (repeatable)")
    group.add_argument("--box-top-k", type=int, default=None, help="a detector: explain its k best boxes")
    # A segmenter's region flags all start with --region: --box is a detector's (the API's box target).
    sp.add_argument("--region", type=int, nargs="?", const=-1, default=None, metavar="CLASS",
                    help="a segmenter: explain CLASS in a region (its predicted mask unless --region-box or "
                    "--region-polygon); without CLASS, the --top-k classes with most pixels there")
    sp.add_argument("--region-box", default=None, metavar="X0,Y0,X1,Y1",
                    help="a segmenter: the region as a box in image pixels")
    sp.add_argument("--region-polygon", default=None, metavar="X,Y,X,Y,...",
                    help="a segmenter: the region as a polygon in image pixels")
    layer = sp.add_mutually_exclusive_group()
    layer.add_argument("--layer", default=None, help="target layer (default: the model's)")
    layer.add_argument("--layers", default=None, metavar="NAMES",
                       help="CAM family: a layer sweep, 'blocks' (the model's stages) or names separated by commas; "
                            "--out then saves the captioned row of every layer's overlay")
    sp.add_argument("--out", default=None, help="save the overlay PNG here (more targets: beside it, numbered)")
    sp.add_argument("--async", dest="respond_async", action="store_true",
                    help="ask the service to run it as a job (Prefer: respond-async), then follow it")
    model_and_params(sp)

    sp = add("job", cmd_job, "submit a job (deepdream, class_viz, style, ...); --wait to follow it")
    sp.add_argument("type", metavar="TYPE")
    sp.add_argument("images", nargs="*", metavar="IMAGE")
    sp.add_argument("--wait", action="store_true", help="wait for the end, with a progress bar on stderr")
    sp.add_argument("--out", default=None, help="save the result here (implies --wait)")
    sp.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    sp.add_argument("--idempotency-key", default=None, help="default: a fresh one per submit")
    model_and_params(sp)

    sp = add("jobs", cmd_jobs, "your jobs, newest first")
    sp.add_argument("--status", default=None, choices=["queued", "running", "succeeded", "failed", "canceled"])
    sp.add_argument("--limit", type=int, default=50)

    sp = add("status", cmd_status, "a job's status and progress")
    sp.add_argument("id", metavar="ID")
    sp.add_argument("--wait", type=float, default=None, help="seconds the service may wait for the job to end")

    sp = add("result", cmd_result, "fetch a job's result (or --artifact NAME); --wait S waits for the job first")
    sp.add_argument("id", metavar="ID")
    sp.add_argument("--artifact", default=None)
    sp.add_argument("--wait", type=float, default=None, metavar="S",
                    help="wait up to S seconds for the job to finish, then fetch (default: fetch now)")
    sp.add_argument("--out", default=None, help="save it here (JSON is printed without --out)")

    sp = add("evaluate", cmd_evaluate, "which explanation method can you trust? faithfulness, pointing and "
             "randomization checks of methods over a labelled collection")
    sp.add_argument("source", metavar="COLLECTION", help="a collection id, or a ZIP of images to upload first")
    sp.add_argument("--labels", default=None, metavar="FILE.json",
                    help='with a ZIP: {"labels": [...], "boxes": [[[x0, y0, x1, y1], ...], ...]} in image order')
    sp.add_argument("--method", action="append", required=True, metavar="NAME[:JSON]",
                    help='a method, optionally with its params: gradcam:{"layer": "_blocks.15"} (repeatable)')
    sp.add_argument("--class", dest="klass", action="append", metavar="LABEL=CLASS",
                    help="the model's class (label or index) for a collection label (repeatable)")
    sp.add_argument("--out", default=None, metavar="DIR", help="save result.json, grid.png and curves.png here")
    sp.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    model_and_params(sp)

    sp = add("cancel", cmd_cancel, "cancel a job")
    sp.add_argument("id", metavar="ID")

    add("models", cmd_models, "the model catalog")
    sp = add("methods", cmd_methods, "explain methods and job types")
    sp.add_argument("--kind", choices=["explain", "job"], default=None)

    for name, text in (("serve", "run the service (API, embedded Redis and a worker)"),
                       ("worker", "run a job worker")):
        sub.add_parser(name, help=text, add_help=False)
    return p


def _service_main() -> Callable[[list[str]], int]:
    """The service's command line: the ``cnnviz`` console script of the ``cnnviz`` distribution.

    Found through the distribution's metadata rather than a module name, so it follows the
    service wherever its command line lives; a source checkout that was never installed falls
    back to the module names it has had.
    """
    errors: list[str] = []
    try:
        eps = importlib.metadata.distribution("cnnviz").entry_points
        for ep in eps:
            if ep.group == "console_scripts" and ep.name == "cnnviz" and not ep.value.startswith("cnnviz_client"):
                return ep.load()  # type: ignore[no-any-return]
    except (importlib.metadata.PackageNotFoundError, ImportError, AttributeError) as exc:
        errors.append(str(exc))
    for module in SERVICE_MODULES:
        try:
            return importlib.import_module(module).main  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            errors.append(str(exc))
    raise ImportError("; ".join(errors) or "no cnnviz service")


def _hand_over(argv: list[str]) -> int:
    """``serve`` / ``worker``: run by the service's own command line, when it is installed."""
    try:
        service_main = _service_main()
    except ImportError as exc:
        sys.stderr.write(f"cnnviz {command_of(argv)}: the cnnviz service is not installed here, only its client "
                         f"({exc}); install the cnnviz package to run the service\n")
        return 2
    return int(service_main(argv))


# Where a problem's ``see`` link is also a command of this command line.
SEE_COMMANDS = {"/v1/methods": "cnnviz methods", "/v1/models": "cnnviz models"}


def problem_text(exc: ProblemError, base_url: str) -> str:
    """A problem for a person: ``title: detail``, then the help the service sent with it.

    The names it suggests (``choices``: the closest names for an unknown one, else the valid ones;
    ``valid`` form or body fields) and where to look them up (``see``, made absolute on ``base_url``).
    """
    lines = [f"{exc.title}: {exc.detail}" if exc.detail else exc.title]
    choices = exc.extra.get("choices")
    if isinstance(choices, list) and choices:
        label = "did you mean" if exc.slug.startswith("unknown-") else "choices"
        lines.append(f"  {label}: {', '.join(str(c) for c in choices)}")
    valid = exc.extra.get("valid")
    if isinstance(valid, list) and valid:
        lines.append(f"  valid: {', '.join(str(v) for v in valid)}")
    see = exc.extra.get("see")
    if isinstance(see, str) and see:
        url = base_url.rstrip("/") + see if see.startswith("/") else see
        command = SEE_COMMANDS.get(see)
        lines.append(f"  see: {url}" + (f" ({command})" if command else ""))
    return "\n".join(lines) + "\n"


def _reader_gone() -> int:
    """stdout's reader closed it (``cnnviz jobs | head``): end quietly, as ``head``'s writer should.

    stdout is pointed at /dev/null so the interpreter's last flush does not fail once more.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (stdout replaced in-process)
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a problem, 2 a usage error, 141 stdout's
    reader stopped reading)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if command_of(args) in SERVICE_COMMANDS:
        return _hand_over(args)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has written the message
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=str(ns.log_level).upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with Client(ns.url, ns.api_key, ns.timeout, retry=max(0, ns.retries)) as client:
            status = int(ns.func(client, ns))
        sys.stdout.flush()  # here, so a reader gone is seen below rather than at interpreter exit
        return status
    except BrokenPipeError:
        return _reader_gone()
    except ProblemError as exc:
        sys.stderr.write(problem_text(exc, ns.url))
        return 1
    except (JobFailedError, JobTimeoutError, CnnvizError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except httpx.TransportError as exc:
        sys.stderr.write(f"cannot reach the service at {ns.url}: {type(exc).__name__}: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
