"""The explorer's layer sweep: the box in the CAM panel asks for every block and shows the captioned row."""

from __future__ import annotations

import pytest

from tests.browser.browser import Browser
from tests.browser.conftest import open_explorer

pytestmark = [pytest.mark.jobs, pytest.mark.timeout(240)]


def test_layer_sweep_box_shows_the_row(live: tuple[Browser, str]) -> None:
    b, base = live
    open_explorer(b, base)
    b.click("#tab-explain [data-sample='chelsea']")
    b.wait(lambda: b.image_loaded("#explain-result img.hv-heat"), 60, "the first map")
    b.console_errors()  # drained: the page's first load, before the key was stored, was a 401
    b.click("#layer-sweep")
    row = b.wait(lambda: b.image_loaded("#sweep-row img"), 90, "the sweep's row")
    assert row["src"].startswith("data:image/png") and row["width"] > 4 * row["height"]
    meta = b.text("#tab-explain .meta")
    assert "act_stem, _blocks.0" in meta and "act_head" in meta
    assert b.js("return document.querySelector('#layer').disabled")  # one layer or a sweep, not both
    b.click("#layer-sweep")
    b.wait(lambda: b.image_loaded("#explain-result img.hv-heat"), 60, "back to one layer")
    assert b.console_errors() == []
