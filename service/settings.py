"""All service settings in one object, read from ``CNNVIZ_*`` environment variables.

Limits live here so an operator can tighten them; every one has a safe default.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNNVIZ_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    models_file: str | None = Field(None, validation_alias=AliasChoices("CNNVIZ_MODELS", "models_file"),
                                    description="TOML file declaring extra models")
    default_model: str = "efficientnet-lite0"
    device: str | None = None
    preload_models: bool = True

    # Request limits: enforced before the body is parsed (bytes) or before pixels are decoded.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(30.0, gt=0, le=600, description="a request body that stalls this long is a 408")
    max_images: int = Field(16, ge=1, le=256)
    max_collection_images: int = Field(500, ge=1, le=5000)
    max_image_pixels: int = Field(40_000_000, ge=64)
    # Memory: the pixels one request may have decoded, summed over its images and counted from the
    # headers (after the downscaling below) before any pixel is decoded; images are decoded at most
    # this long side (JPEG by the decoder's DCT scaling), what any inline method needs at most.
    max_request_pixels: int = Field(64_000_000, ge=64, description="decoded pixels per request, all images")
    max_decode_side: int = Field(2048, ge=64, le=8192, description="longest side an upload is decoded at")
    max_collection_pixels: int = Field(128_000_000, ge=64, description="decoded pixels per collection upload")
    collection_decode_side: int = Field(1024, ge=64, le=8192, description="longest side a collection image is kept at")

    # Work limits, in forward-pass equivalents at the model's input size.
    inline_budget: float = Field(400.0, ge=1)
    max_job_cost: float = Field(2_000_000.0, ge=1)

    # Inline compute (core/batching.py): concurrent explanations of the same computation share one
    # engine call; at most inline_slots engine calls at once, at most inline_max_requests requests
    # waiting or computing (past it: 503 inline-busy with Retry-After).
    batch_wait_ms: float = Field(5.0, ge=0, le=100, description="longest wait for requests to batch with")
    # 4: on a 2-core CPU a batch of eight ran slower per image than four (activations spill the cache)
    batch_max_images: int = Field(4, ge=1, le=64, description="images per batched engine call (1: no batching)")
    inline_slots: int | None = Field(None, ge=1, le=64, description="compute lanes: inline engine calls at once "
                                     "per process; default: as many as the cores hold at torch_threads each")
    inline_max_requests: int = Field(16, ge=1, le=1024, description="inline requests in compute per process")
    inline_retry_after_s: int = Field(1, ge=1, le=60)
    compile_predict: bool = Field(True, description="compile each model's forward (predict, and the CAM family "
                                  "at the default layer) in the background "
                                  "(core/compiled.py); needs a C++ compiler, CPU only")
    elastic_lanes: bool = Field(True, description="where one lane holds every core: a lone engine call runs on "
                                "it, calls under load on one-thread lanes, one per core (core/compute.py); "
                                "an explicit inline_slots fixes the lanes")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch intra-op threads per compute lane; "
                                      "default: the cores per lane, at most 4 (core/compute.py)")

    # Jobs and access.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "CNNVIZ_REDIS_URL", "redis_url"))
    api_keys: list[str] = Field(default_factory=list)
    max_queued_jobs: int = Field(100, ge=1)
    max_jobs_per_key: int = Field(8, ge=1)
    artifact_ttl_s: int = Field(24 * 3600, ge=60)
    result_ttl_s: int = Field(24 * 3600, ge=60)

    # Trained networks (styles, embedding heads): kept this long after their last training (0: until
    # deleted), at most this many of each kind per key.
    trained_ttl_s: int = Field(30 * 24 * 3600, ge=0)
    max_trained_per_key: int = Field(50, ge=1, le=10_000)
    max_apply_side: int = Field(2048, ge=64, le=4096, description="longest side a style is applied at inline")


@lru_cache
def get_settings() -> Settings:
    return Settings()
