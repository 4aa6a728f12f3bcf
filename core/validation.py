"""Checking a params dict against its model: pydantic errors become one 422 domain error."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from core.errors import Invalid

M = TypeVar("M", bound=BaseModel)


def validation_problem(exc: ValidationError, title: str = "Invalid parameters") -> Invalid:
    """A pydantic error as a 422 problem listing each failing field."""
    errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return Invalid("invalid-parameters", title,
                        "; ".join(f"{'.'.join(e['loc']) or 'params'}: {e['msg']}" for e in errors), errors=errors)


def validate_params(model: type[M], params: dict[str, Any]) -> M:
    """Validate a params dict, turning pydantic errors into a 422 problem."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise validation_problem(exc) from exc
