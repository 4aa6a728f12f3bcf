"""Every setting of an API process or a worker, in one object read from the environment.

All of them are ``CNNVIZ_*`` environment variables (plus ``REDIS_URL``), read once per process
(:func:`get_settings`); the API, the workers and the ``cnnviz`` command take them from here and
nowhere else, so an operator finds every knob in one place: the README's *Settings* table, which a
test keeps equal to this model. Limits live here so an operator can tighten them; every one has a
safe default and bounds, and a value outside them stops the process at start-up with a message
naming the variable rather than misbehaving later.

The job system's names and timings (:class:`core.store.config.JobConfig`) are a view of these
settings (:attr:`Settings.job_config`), so an API and its workers that share an environment agree.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.store.config import JobConfig

DAY_S = 24 * 3600
YEAR_S = 365 * DAY_S


class Settings(BaseSettings):
    """One field per environment variable: ``CNNVIZ_<FIELD>``, unless an alias names it otherwise."""

    model_config = SettingsConfigDict(env_prefix="CNNVIZ_", extra="ignore")

    # --- the process ---------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address the API listens on (cnnviz serve)")
    port: int = Field(8000, ge=1, le=65535, description="port the API listens on (cnnviz serve)")
    log_level: str = Field("INFO", pattern="(?i)^(debug|info|warning|error|critical)$",
                           description="logging level of cnnviz serve and cnnviz worker")
    data_dir: str | None = Field(None, description="where the embedded Redis of cnnviz serve keeps its data; "
                                 "default $XDG_DATA_HOME/cnnviz or ~/.local/share/cnnviz")

    # --- models ----------------------------------------------------------------------------------
    models_file: str | None = Field(None, validation_alias=AliasChoices("CNNVIZ_MODELS", "models_file"),
                                    description="TOML file declaring extra models")
    default_model: str = Field("efficientnet-lite0", description="the model a request without one uses")
    device: str | None = Field(None, description="torch device of the models (cpu, cuda, cuda:N); "
                               "default: cuda when available, else cpu")
    preload_models: bool = Field(True, description="load (and warm) every model at start, not on first use")

    # --- request limits: enforced before the body is parsed (bytes) or before pixels are decoded --
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, le=1024**3,
                                description="largest request body, and largest artifact a job may store")
    body_timeout_s: float = Field(30.0, gt=0, le=600, description="a request body that stalls this long is a 408")
    max_images: int = Field(16, ge=1, le=256, description="images per inline request")
    max_collection_images: int = Field(500, ge=1, le=5000, description="images per collection")
    max_image_pixels: int = Field(40_000_000, ge=64, le=1_000_000_000,
                                  description="pixels of one image, read from its header before decoding")
    # Memory: the pixels one request may have decoded, summed over its images and counted from the
    # headers (after the downscaling below) before any pixel is decoded; images are decoded at most
    # this long side (JPEG by the decoder's DCT scaling), what any inline method needs at most.
    max_request_pixels: int = Field(64_000_000, ge=64, le=1_000_000_000,
                                    description="decoded pixels per request, all images")
    max_decode_side: int = Field(2048, ge=64, le=8192, description="longest side an upload is decoded at")
    # Signals and volumes (1-D and 3-D convnets): values per request, counted from the file headers
    # (a .npy header, a WFDB .hea, a NIfTI or DICOM header) before any value is decoded.
    max_signal_samples: int = Field(8_000_000, ge=64, le=1_000_000_000,
                                    description="signal samples per request (channels x samples, all files)")
    max_volume_voxels: int = Field(64_000_000, ge=64, le=1_000_000_000,
                                   description="volume voxels per request (channels x D x H x W, all files)")
    max_collection_pixels: int = Field(128_000_000, ge=64, le=1_000_000_000,
                                       description="decoded pixels per collection upload")
    collection_decode_side: int = Field(1024, ge=64, le=8192, description="longest side a collection image is kept at")

    # --- work limits, in forward-pass equivalents at the model's input size ----------------------
    inline_budget: float = Field(400.0, ge=1, le=1_000_000,
                                 description="most work an inline request may cost; past it: a job")
    max_job_cost: float = Field(2_000_000.0, ge=1, le=1e12, description="most work one job may cost")

    # --- inline compute (core/batching.py, core/lanes.py) ----------------------------------------
    # Concurrent explanations of the same computation share one engine call; at most inline_slots
    # engine calls at once, at most inline_max_requests requests waiting or computing (past it:
    # 503 inline-busy with Retry-After).
    batch_wait_ms: float = Field(5.0, ge=0, le=100, description="longest wait for requests to batch with")
    # 4: on a 2-core CPU a batch of eight ran slower per image than four (activations spill the cache)
    batch_max_images: int = Field(4, ge=1, le=64, description="images per batched engine call (1: no batching)")
    inline_slots: int | None = Field(None, ge=1, le=64, description="compute lanes: inline engine calls at once "
                                     "per process; default: as many as the cores hold at torch_threads each")
    inline_max_requests: int = Field(16, ge=1, le=1024, description="inline requests in compute per process")
    inline_retry_after_s: int = Field(1, ge=1, le=60, description="Retry-After of a 503 inline-busy")
    compile_predict: bool = Field(True, description="compile each model's forward (predict, and the CAM family "
                                  "at the default layer) in the background "
                                  "(core/compiled.py); needs a C++ compiler, CPU only")
    elastic_lanes: bool = Field(True, description="where one lane holds every core: a lone engine call runs on "
                                "it, calls under load on one-thread lanes, one per core (core/lanes.py); "
                                "an explicit inline_slots fixes the lanes")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads per compute lane; "
                                      "default: the cores per lane, at most 4 (core/lanes.py)")

    # --- jobs and access -----------------------------------------------------------------------------
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "CNNVIZ_REDIS_URL", "redis_url"),
                                  description="the job system's Redis; unset: no jobs (cnnviz serve starts "
                                  "an embedded one)")
    api_keys: list[str] = Field(default_factory=list, description="JSON list of accepted API keys; "
                                "empty: no key needed")
    max_queued_jobs: int = Field(100, ge=1, le=1_000_000, description="jobs waiting per queue; past it: 503")
    max_jobs_per_key: int = Field(8, ge=1, le=100_000, description="queued plus running jobs per API key; "
                                  "past it: 429")
    artifact_ttl_s: int = Field(DAY_S, ge=60, le=YEAR_S, description="how long a job's pictures and files are kept")
    result_ttl_s: int = Field(DAY_S, ge=60, le=YEAR_S, description="how long a finished job's record is kept")
    queue: str = Field(JobConfig.queue, min_length=1, max_length=100,
                       description="base name of the rq queues: <queue>-short and <queue>-long")
    key_prefix: str = Field(JobConfig.prefix, min_length=1, max_length=100,
                            description="prefix of every Redis key of the job system")
    job_heartbeat_ttl: float = Field(JobConfig.heartbeat_ttl_s, ge=1, le=3600,
                                     description="seconds a running job may go without a heartbeat before "
                                     "it is abandoned (or retried)")
    job_heartbeat_interval: float = Field(JobConfig.heartbeat_interval_s, ge=0.05, le=1200,
                                          description="seconds between a running job's heartbeats; at most "
                                          "a third of job_heartbeat_ttl is used")
    job_orphan_grace: float = Field(JobConfig.orphan_grace_s, ge=1, le=3600,
                                    description="seconds a queued job may be on no rq list before the API "
                                    "pushes it again")

    # --- trained networks (styles, embedding heads) ----------------------------------------------
    trained_ttl_s: int = Field(30 * DAY_S, ge=0, le=10 * YEAR_S,
                               description="a trained network is kept this long after its last training "
                               "(0: until deleted)")
    max_trained_per_key: int = Field(50, ge=1, le=10_000, description="trained networks of each kind per key")
    max_apply_side: int = Field(2048, ge=64, le=4096, description="longest side a style is applied at inline")

    @property
    def job_config(self) -> JobConfig:
        """Where jobs live in Redis and how liveness is judged, as the API and the workers use them."""
        return JobConfig(queue=self.queue, prefix=self.key_prefix, heartbeat_ttl_s=self.job_heartbeat_ttl,
                         heartbeat_interval_s=min(self.job_heartbeat_interval, self.job_heartbeat_ttl / 3),
                         orphan_grace_s=self.job_orphan_grace)


def env_names(field: str) -> list[str]:
    """The environment variables a field is read from, the documented one first."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [a.upper() for a in alias.choices if isinstance(a, str) and a != field]
    return [f"{Settings.model_config['env_prefix']}{field}".upper()]


_process_settings: Settings | None = None


def get_settings() -> Settings:
    """This process's settings, read from the environment on first use and kept.

    Read once: a process whose environment changes later keeps what it started with, and every
    part of it sees the same values.
    """
    global _process_settings
    if _process_settings is None:
        _process_settings = Settings()
    return _process_settings


def use_settings(settings: Settings) -> Settings:
    """Make ``settings`` this process's settings (a command line's overrides, such as ``--device``)."""
    global _process_settings
    _process_settings = settings
    return settings
