"""The one settings model (core/settings.py) and its one table in the README (## Settings).

The README table is the operator's list of every knob: it must name exactly the model's variables,
with their defaults and bounds, and each numeric setting must be bounded at both ends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError

from core.settings import Settings, env_names, get_settings, use_settings
from core.store.config import JobConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def shown_default(field: str) -> str:
    """A field's default as the README table writes it."""
    info = Settings.model_fields[field]
    value: Any = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    if isinstance(value, list):
        return f"`{value!r}`"
    return f"`{value}`"


def shown_bounds(field: str) -> str:
    """A numeric field's bounds as an interval (``[1, 65535]``, ``(0, 600]``); ``-`` for others."""
    meta = Settings.model_fields[field].metadata
    low = next(((f"[{_number(m.ge)}" if isinstance(m, Ge) else f"({_number(m.gt)}") for m in meta
                 if isinstance(m, Ge | Gt)), None)
    high = next(((f"{_number(m.le)}]" if isinstance(m, Le) else f"{_number(m.lt)})") for m in meta
                 if isinstance(m, Le | Lt)), None)
    return "-" if low is None and high is None else f"{low}, {high}"


def readme_rows() -> dict[str, tuple[str, str]]:
    """Variable -> (default, bounds), from the table under ``## Settings``."""
    text = README.read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and (m := re.fullmatch(r"`([A-Z0-9_]+)`(?:,.*)?", cells[0])):
            rows[m.group(1)] = (cells[1], cells[2])
    return rows


def test_readme_settings_table_lists_exactly_the_model_fields_with_defaults_and_bounds() -> None:
    expected = {env_names(f)[0]: (shown_default(f), shown_bounds(f)) for f in Settings.model_fields}
    assert readme_rows() == expected


def test_settings_section_sits_just_before_layout() -> None:
    headings = re.findall(r"^## (.+)$", README.read_text(), re.M)
    assert headings[headings.index("Settings") + 1] == "Layout"


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_every_setting_is_described_and_every_number_bounded_at_both_ends(field: str) -> None:
    info = Settings.model_fields[field]
    assert info.description, f"{field} has no description"
    if info.annotation in (int, float, int | None, float | None):
        assert any(isinstance(m, Ge | Gt) for m in info.metadata), f"{field} has no lower bound"
        assert any(isinstance(m, Le | Lt) for m in info.metadata), f"{field} has no upper bound"


def test_values_outside_the_bounds_stop_the_process_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNVIZ_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings()
    monkeypatch.setenv("CNNVIZ_PORT", "8001")
    monkeypatch.setenv("CNNVIZ_JOB_ORPHAN_GRACE", "0.5")
    with pytest.raises(ValidationError, match="job_orphan_grace"):
        Settings()


def test_job_config_is_a_view_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API and the workers build their job names and timings from the same variables."""
    monkeypatch.setenv("CNNVIZ_QUEUE", "q1")
    monkeypatch.setenv("CNNVIZ_KEY_PREFIX", "p1")
    monkeypatch.setenv("CNNVIZ_JOB_HEARTBEAT_TTL", "3")
    monkeypatch.setenv("CNNVIZ_JOB_HEARTBEAT_INTERVAL", "2")
    monkeypatch.setenv("CNNVIZ_JOB_ORPHAN_GRACE", "4")
    cfg = Settings().job_config
    assert (cfg.queue, cfg.prefix, cfg.heartbeat_ttl_s, cfg.orphan_grace_s) == ("q1", "p1", 3.0, 4.0)
    assert cfg.heartbeat_interval_s == 1.0  # at most a third of the TTL: a beat is never the last chance
    assert cfg.queue_name("long") == "q1-long"
    defaults = Settings.model_construct().job_config  # no environment: the same as JobConfig's own defaults
    assert (defaults.queue, defaults.prefix, defaults.heartbeat_ttl_s, defaults.orphan_grace_s) == (
        JobConfig.queue, JobConfig.prefix, JobConfig.heartbeat_ttl_s, JobConfig.orphan_grace_s)


def test_redis_url_reads_the_plain_variable_and_models_its_short_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("CNNVIZ_MODELS", "/etc/cnnviz/models.toml")
    s = Settings()
    assert (s.redis_url, s.models_file) == ("redis://example:6379/3", "/etc/cnnviz/models.toml")
    assert env_names("redis_url")[0] == "REDIS_URL" and env_names("models_file") == ["CNNVIZ_MODELS"]


def test_settings_are_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.settings as module

    monkeypatch.setattr(module, "_process_settings", None)
    monkeypatch.setenv("CNNVIZ_DEVICE", "cpu")
    first = get_settings()
    monkeypatch.setenv("CNNVIZ_DEVICE", "cuda")
    assert get_settings() is first and first.device == "cpu"
    override = use_settings(first.model_copy(update={"device": "cuda:0"}))  # cnnviz worker --device
    assert get_settings() is override and override.device == "cuda:0"
