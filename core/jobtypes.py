"""The job-type registry: one entry per job type, from which everything else is derived.

An entry names the type, its parameter model, how many images it takes, its queue (short or
long work), the worker function that runs it (a dotted path, so the API never imports worker
code), and how a request is checked against the model and priced before it is queued
(``prepare``). Submission and validation (``service``), ``GET /v1/methods``, the typed
``POST /v1/jobs`` request in the OpenAPI document and the worker's function table all read this
table; adding a job type is its engine function, its parameter model and one :func:`register`
call here.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from cnnviz.errors import EngineError, closest
from cnnviz.models import Catalog, LoadedModel
from cnnviz.synthesis import DeepDreamConfig
from cnnviz.synthesis.adversarial import adversarial
from cnnviz.synthesis.adversarial import estimate_cost as adversarial_cost
from cnnviz.synthesis.class_viz import class_visualization
from cnnviz.synthesis.class_viz import estimate_cost as class_viz_cost
from cnnviz.synthesis.deepdream import estimate_cost as deepdream_cost
from cnnviz.synthesis.inversion import estimate_cost as inversion_cost
from cnnviz.synthesis.inversion import invert
from cnnviz.synthesis.style import estimate_cost as style_cost
from cnnviz.synthesis.style import style_transfer
from cnnviz.synthesis.texture import efros_leung, estimate_efros_leung_cost, estimate_gram_cost, gram_texture
from cnnviz.training.fast_style import estimate_cost as fast_style_cost
from cnnviz.training.triplet import estimate_cost as triplet_cost
from cnnviz.training.verifier import estimate_cost as verifier_cost
from core.errors import Invalid, NotFound
from core.explaining import CheckedExplain, check_explain
from core.imaging import DecodedImage
from core.lookups import check_layers, lookup_model, owned_collection
from core.schemas.collections import CollectionViewParams
from core.schemas.explain import ExplainJobParams
from core.schemas.synthesis import (
    AdversarialParams,
    ClassVizParams,
    DeepDreamParams,
    InversionParams,
    StrictParams,
    StyleParams,
    TextureNNParams,
    TextureParams,
)
from core.schemas.training import RESUMABLE, FastStyleParams, TripletHeadParams, VerificationHeadParams
from core.schemas.trust import EvaluateParams
from core.store.collections import CollectionStore
from core.store.trained import JOB_KINDS, TrainedStore, TrainingLock, load_embedder
from core.trusting import check_evaluate
from core.validation import validation_problem

Queue = Literal["short", "long"]
Family = Literal["explain", "collection", "synthesis", "training"]


# ---- what prepare gets and gives ---------------------------------------------------------------

@dataclass
class SubmitContext:
    """What checking a job request needs: the models, the caller, and the stores it may refer to."""

    catalog: Catalog
    owner: str
    collections: CollectionStore | None = None  # None: the job type needs no stored collection
    trained: TrainedStore | None = None
    is_active_job: Callable[[str], bool] = lambda _job_id: False  # the caller's queued or running job?
    max_trained_per_key: int = 50
    trained_ttl_s: int = 30 * 24 * 3600
    checkpoint_ttl_s: int = 24 * 3600

    def model(self, name: str | None) -> LoadedModel:
        return lookup_model(self.catalog, name or self.catalog.default)

    def owned_collection(self, cid: str) -> dict[str, Any]:
        """The caller's collection; another key's or an unknown id is 404."""
        return owned_collection(self.collections, self.owner, cid)


@dataclass
class Prepared:
    """A checked request: the spec the worker reads, its cost in forward passes, and an optional lock."""

    spec: dict[str, Any]
    cost: float
    lock: TrainingLock | None = None


Prepare = Callable[["JobType", SubmitContext, Any, list[DecodedImage]], Prepared]


@dataclass(frozen=True)
class JobType:
    """One job type, declared once."""

    name: str
    family: Family
    params: type[BaseModel]
    images: tuple[int, int]  # (min, max) uploaded images
    images_help: str  # what the images are, in order (for problems and the API document)
    queue: Queue
    runner: str  # dotted path of the worker function, resolved by rq in the worker process
    prepare: Prepare
    cost: Callable[..., float] | None = None  # the engine's estimate, (model, **params) -> forward passes
    engine: Callable[..., Any] | None = None  # optimization jobs: the engine function the generic runner calls
    image_args: tuple[str, ...] = ()  # its keyword arguments the uploaded images fill, in order
    steps_param: str = "steps"  # the parameter that counts steps (progress totals); "" when none
    # A running job whose worker died (heartbeat gone) is queued again up to this many times, then
    # failed with "abandoned"; with ``resumes`` a retry continues from the job's last checkpoint.
    retries: int = 1
    resumes: bool = False

    def default_cost(self, model: LoadedModel) -> float:
        """The cost of the default parameters (0 when the type has no default or is priced per request)."""
        try:
            return float(self.cost(model)) if self.cost is not None else 0.0
        except (TypeError, ValueError, EngineError):  # a parameter without a default (adversarial's target)
            return 0.0

    def check(self, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
        """The request checked against its model and stores, priced; image counts first.

        A resumed training run reuses its checkpoint's images, so its count is checked there.
        """
        if not getattr(job.params, "resume", False):
            self.check_image_count(len(images))
        return self.prepare(self, ctx, job, images)

    @property
    def title(self) -> str:
        return (self.params.__doc__ or self.name).strip().splitlines()[0]

    def check_image_count(self, n: int) -> None:
        lo, hi = self.images
        if not lo <= n <= hi:
            raise Invalid("wrong-image-count", f"A {self.name} job takes {self.images_help}; got {n} image(s)",
                          expected=[lo, hi])


JOB_TYPES: dict[str, JobType] = {}


def register(entry: JobType) -> JobType:
    JOB_TYPES[entry.name] = entry
    return entry


def job_type(name: str) -> JobType:
    try:
        return JOB_TYPES[name]
    except KeyError:
        # A field of the request body, not a resource in the path: an invalid request (422).
        raise Invalid("unknown-job-type", f"No job type named {name!r}",
                      choices=closest(name, sorted(JOB_TYPES))) from None


def _spec(entry_name: str, model: LoadedModel, params: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": entry_name, "model": model.name, "params": params, **more}


# ---- prepare functions ---------------------------------------------------------------------------

def _deepdream_cost(model: LoadedModel, config: DeepDreamConfig | None = None, height: int | None = None,
                    width: int | None = None) -> float:
    return deepdream_cost(config or DeepDreamConfig(), model.preprocessing.input_size, height, width)


def _prepare_deepdream(entry: JobType, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
    model = ctx.model(job.model)
    p: DeepDreamParams = job.params
    check_layers(model, [p.layer] if p.layer else [])
    h, w = (images[0].height, images[0].width) if images else (p.size, p.size)
    config = DeepDreamConfig(**p.model_dump(exclude={"preview_every"}))
    cost = entry.cost(model, config, h, w) if entry.cost else 0.0
    return Prepared(_spec("deepdream", model, p.model_dump(mode="json")), cost)


def _prepare_explain(entry: JobType, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
    model = ctx.model(job.model)
    return explain_job(model, check_explain(model, job.params.method, job.params.explain, len(images),
                                            [(d.height, d.width) for d in images]))


def explain_job(model: LoadedModel, request: CheckedExplain) -> Prepared:
    """An explain request checked and priced once (:func:`core.explaining.check_explain`), as a job.

    ``POST /v1/jobs`` and the explain route's hand-off both end here: the spec keeps the
    parameters as the client sent them, which the worker reads with the same model.
    """
    return Prepared(_spec("explain", model, {"method": request.method, "explain": request.raw}), request.cost)


def _prepare_collection(entry: JobType, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
    """Check a collection view (owner, layer, query image) and estimate it in forward passes."""
    model = ctx.model(job.model)
    p: CollectionViewParams = job.params
    rec = ctx.owned_collection(p.collection)
    wanted = 1 if p.view == "neighbours" else 0
    if len(images) != wanted:
        raise Invalid("wrong-image-count", f"A {p.view} view takes {wanted} image(s); got {len(images)}",
                      expected=wanted)
    check_layers(model, [p.layer] if p.layer else [])
    if p.view in ("calibrate", "enroll") and not rec.get("labels"):
        raise Invalid("missing-labels", "Calibration needs a collection uploaded with labels")
    if p.head is not None and ctx.trained is not None:
        load_embedder(ctx.trained, ctx.owner, p.head, model)  # 404 unknown head, 422 another model's
    scale = ((p.size or model.preprocessing.input_size) / model.preprocessing.input_size) ** 2
    cost = (rec["count"] + 1) * scale
    if p.view == "top_patches":
        cost += 3 * p.k * (len(p.channels) if p.channels else p.top_channels) * scale
    return Prepared(_spec("collection", model, p.model_dump(mode="json")), cost)


def _prepare_evaluate(entry: JobType, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
    """Check an evaluation (collection with labels, methods and their parameters, classes, stages); price it."""
    model = ctx.model(job.model)
    p: EvaluateParams = job.params
    checked = check_evaluate(model, p, ctx.owned_collection(p.collection))
    return Prepared(_spec("evaluate", model, p.model_dump(mode="json")), checked.cost)


def _prepare_synthesis(entry: JobType, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
    """Check an optimization job against the model and price it with its engine cost function."""
    model = ctx.model(job.model)
    p: StrictParams = job.params
    check_layers(model, p.layer_names())
    params = {k: v for k, v in p.model_dump(mode="json").items() if v is not None}
    kwargs = {k: v for k, v in params.items() if k != "preview_every"}
    assert entry.cost is not None
    if images and "source_size" not in entry.params.model_fields \
            and "source_size" in inspect.signature(entry.cost).parameters:
        kwargs["source_size"] = (images[0].height, images[0].width)  # priced by the uploaded source's size
    try:
        cost = float(entry.cost(model, **kwargs))
    except EngineError as exc:
        raise Invalid(exc.slug, "The job cannot be run as asked", str(exc)) from exc
    return Prepared(_spec(job.type, model, params), cost)


PLURAL = {"style": "styles", "embedder": "embedders", "verifier": "verifiers"}


def _prepare_training(entry: JobType, ctx: SubmitContext, job: Any, images: list[DecodedImage]) -> Prepared:
    """Check a training request against its model, collection, name and checkpoint; price it.

    A resumed run takes its checkpoint's parameters, model and images; the request may change
    only the step count and the reporting cadences.
    """
    kind = JOB_KINDS[job.type]
    p = job.params
    store, owner = ctx.trained, ctx.owner
    assert store is not None, "training jobs need the trained-network store"
    if p.resume:
        ckpt = store.checkpoint_info(kind, owner, p.name)
        if ckpt is None:
            raise NotFound("no-checkpoint", f"No checkpoint of {kind} {p.name!r} to resume",
                           "Checkpoints are kept while a name is trained, cancelled or failed, until its TTL.")
        if job.model is not None and job.model != ckpt["model"]:
            raise Invalid("checkpoint-model-mismatch", f"The checkpoint was trained on {ckpt['model']!r}")
        if images:
            raise Invalid("wrong-image-count", "A resumed run reuses its checkpoint's images; send none",
                          expected=0)
        params = {**ckpt["params"], **p.model_dump(mode="json", include=p.model_fields_set & RESUMABLE),
                  "resume": True}
        model = lookup_model(ctx.catalog, ckpt["model"])
    else:
        model = ctx.model(job.model)
        check_layers(model, p.layer_names())
        if store.get(kind, owner, p.name) is None and store.count(kind, owner) >= ctx.max_trained_per_key:
            raise Invalid("too-many-trained", f"At most {ctx.max_trained_per_key} {PLURAL[kind]} per key; "
                          "delete one first", limit=ctx.max_trained_per_key)
        params = p.model_dump(mode="json")
    col = ctx.owned_collection(params["collection"])
    if kind in ("embedder", "verifier"):
        what = "A triplet head" if kind == "embedder" else "A verification head"
        counts = Counter(col.get("labels") or [])
        if not counts:
            raise Invalid("missing-labels", f"{what} needs a collection uploaded with labels")
        if len(counts) < 2:
            raise Invalid("bad-labels", f"{what} needs at least two classes")
        if params.get("split") == "images" and min(counts.values()) < 2:
            raise Invalid("bad-labels", "split 'images' needs two images of every class",
                          "Use split 'views' (or 'auto') to hold out augmented views instead.",
                          single=sorted(k for k, v in counts.items() if v < 2)[:20])
    assert entry.cost is not None
    priced = {k: v for k, v in params.items() if v is not None}
    cost = float(entry.cost(model, n_images=int(col["count"]), **priced))
    spec = _spec(job.type, model, params,
                 store={"ttl_s": ctx.trained_ttl_s, "checkpoint_ttl_s": ctx.checkpoint_ttl_s})
    lock = TrainingLock(store, kind, owner, p.name, ctx.is_active_job)
    return Prepared(spec, cost, lock)


# ---- the table -------------------------------------------------------------------------------------

_W = "workers.runners"
register(JobType("explain", "explain", ExplainJobParams, (1, 256), "one or more images", "short",
                 f"{_W}.explain.run", _prepare_explain))
register(JobType("collection", "collection", CollectionViewParams, (0, 1),
                 "no image (a neighbours view: one query image)", "short", f"{_W}.collection.run",
                 _prepare_collection))
register(JobType("evaluate", "collection", EvaluateParams, (0, 0),
                 "no image (the collection is the data)", "long", f"{_W}.evaluate.run", _prepare_evaluate,
                 steps_param=""))
register(JobType("deepdream", "synthesis", DeepDreamParams, (0, 1), "at most one image (none: start from noise)",
                 "long", f"{_W}.deepdream.run", _prepare_deepdream, _deepdream_cost))
register(JobType("class_viz", "synthesis", ClassVizParams, (0, 0), "no image", "long", f"{_W}.synthesis.run",
                 _prepare_synthesis, class_viz_cost, class_visualization))
register(JobType("adversarial", "synthesis", AdversarialParams, (1, 1), "one image", "long",
                 f"{_W}.synthesis.run", _prepare_synthesis, adversarial_cost, adversarial, ("image",)))
register(JobType("inversion", "synthesis", InversionParams, (1, 1), "one image", "long", f"{_W}.synthesis.run",
                 _prepare_synthesis, inversion_cost, invert, ("image",)))
register(JobType("texture", "synthesis", TextureParams, (1, 1), "one image (the texture source)", "long",
                 f"{_W}.synthesis.run", _prepare_synthesis, estimate_gram_cost, gram_texture, ("source",)))
register(JobType("texture_nn", "synthesis", TextureNNParams, (1, 1), "one image (the texture source)", "long",
                 f"{_W}.synthesis.run", _prepare_synthesis, estimate_efros_leung_cost, efros_leung, ("source",),
                 steps_param=""))
register(JobType("style", "synthesis", StyleParams, (2, 2), "two images (content, then style)", "long",
                 f"{_W}.synthesis.run", _prepare_synthesis, style_cost, style_transfer, ("content", "style")))
register(JobType("fast_style", "training", FastStyleParams, (1, 2),
                 "a style image (and optionally a preview content image)", "long", f"{_W}.training.run",
                 _prepare_training, fast_style_cost, retries=3, resumes=True))
register(JobType("triplet_head", "training", TripletHeadParams, (0, 0), "no image (the collection is the data)",
                 "long", f"{_W}.training.run", _prepare_training, triplet_cost, retries=3, resumes=True))
register(JobType("verification_head", "training", VerificationHeadParams, (0, 0),
                 "no image (the collection is the data)", "long", f"{_W}.training.run", _prepare_training,
                 verifier_cost, retries=3, resumes=True))


# ---- the request envelope, derived -------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _envelope(entry: JobType) -> type[BaseModel]:
    """``{type, model, params}`` for one job type; params may be omitted when all of them have defaults."""
    title = "".join(w.capitalize() for w in entry.name.split("_")) + "Job"
    required = any(f.is_required() for f in entry.params.model_fields.values())
    params_field = (entry.params, ...) if required else (entry.params, Field(default_factory=entry.params))
    return create_model(title, __base__=_Strict, __doc__=f"{entry.title} Images: {entry.images_help}.",
                        type=(Literal[entry.name], ...),  # type: ignore[valid-type]
                        model=(str | None, Field(None, max_length=100, description="default: the catalog's default")),
                        params=params_field)


JOB_REQUESTS: dict[str, type[BaseModel]] = {name: _envelope(e) for name, e in JOB_TYPES.items()}
JobRequest = Annotated[Union[tuple(JOB_REQUESTS.values())], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
JOB_REQUEST: TypeAdapter[Any] = TypeAdapter(JobRequest)


def parse_job_request(body: dict[str, Any]) -> Any:
    """A job request checked against its type's envelope; an unknown type names the closest ones."""
    kind = body.get("type") if isinstance(body, dict) else None
    if isinstance(kind, str) and kind not in JOB_TYPES:
        job_type(kind)  # raises Invalid (422: a field of the body, not a path) with the closest names
    try:
        return JOB_REQUEST.validate_python(body)
    except ValidationError as exc:
        raise validation_problem(exc, "Invalid job request") from exc
