"""Answer of ``GET /v1/methods``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class MethodInfo(BaseModel):
    name: str
    title: str
    family: str
    kind: Literal["explain", "job"]
    inline: bool
    cost_hint: float
    uses_layer: bool
    supports_units: bool
    queue: Literal["short", "long"] | None = Field(None, description="job types: the queue (kind of work) it runs on")
    images: str | None = Field(None, description="job types: what the uploaded images are, in order")
    map_kinds: list[str] | None = Field(None, description="explain methods: the renderings output.kind accepts, "
                                        "the default first")
    precisions: list[str] | None = Field(None, description="explain methods: the `precision` values whose "
                                         "forwards really run reduced on the default model's device at the default "
                                         "parameters, fp32 first; others are accepted where the device offers them "
                                         "and run fp32 with a warning (docs/precision.md)")
    params_schema: dict[str, Any]


class MethodList(BaseModel):
    methods: list[MethodInfo]
    inline_budget: float
    cost_unit: str
