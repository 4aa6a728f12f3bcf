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
    max_images: int = Field(16, ge=1, le=256)
    max_collection_images: int = Field(500, ge=1, le=5000)
    max_image_pixels: int = Field(40_000_000, ge=64)

    # Work limits, in forward-pass equivalents at the model's input size.
    inline_budget: float = Field(400.0, ge=1)
    max_job_cost: float = Field(2_000_000.0, ge=1)

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
