"""The explorer and the API docs in a real headless chromium, against the live stack (Redis, API, worker).

Each test checks that nothing was requested from anywhere but 127.0.0.1 and that the console has
no error, and saves a screenshot under docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from .browser import Browser
from .conftest import open_explorer, shot

pytestmark = [pytest.mark.jobs, pytest.mark.timeout(240)]


def assert_clean(b: Browser) -> None:
    """Everything the page requested since the last check stayed local, and the console has no error."""
    urls = b.requested_urls()
    assert urls, "no request was recorded"
    assert Browser.foreign(urls) == [], f"requests left 127.0.0.1: {Browser.foreign(urls)}"
    assert b.console_errors() == []


def select(b: Browser, selector: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(b.css(selector)).select_by_value(value)


def tiny_chelsea(tmp_path: Path, side: int = 96) -> Path:
    import skimage.data
    from PIL import Image

    img = Image.fromarray(skimage.data.chelsea())
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(buf.getvalue())
    return path


def test_page_loads_offline_asks_for_the_key_and_has_no_console_error(live: tuple[Browser, str]) -> None:
    b, base = live
    b.get(base + "/")
    assert b.driver.current_url == f"{base}/ui/"
    # Without a key the service answers 401: the page says so (the problem's title) and points at the field.
    b.wait(lambda: b.all("#key-box.needed"), 30, "the API-key field to be flagged")
    assert "A valid API key is required" in b.text("#banner")
    assert "Traceback" not in b.driver.page_source
    urls = b.requested_urls()
    assert Browser.foreign(urls) == []
    errors = b.console_errors()
    assert all("401" in e["message"] for e in errors), errors  # only the refused /v1 calls

    from jobs.jobkit import KEY_A
    from selenium.webdriver.common.keys import Keys

    b.css("#api-key").send_keys(KEY_A, Keys.ENTER)
    b.wait(lambda: b.js("return document.body.classList.contains('ready')"), 60, "the catalog with the key")
    assert b.js("return localStorage.getItem('cnnviz.apiKey')") == KEY_A
    assert not b.all("#key-box.needed")
    b.requested_urls()
    b.console_errors()

    # A fresh load with the stored key: every request local, no console error, the sample explained.
    b.driver.refresh()
    b.wait(lambda: b.image_loaded("#explain-result img.hv-heat"), 60, "the sample photo's explanation")
    assert len(b.all("#method option")) >= 10
    assert b.all("#layer option")[0].text.startswith("default")
    assert_clean(b)


def test_uploaded_chelsea_explained_with_gradcam_shows_an_overlay(live: tuple[Browser, str], tmp_path: Path) -> None:
    b, base = live
    open_explorer(b, base)
    select(b, "#method", "gradcam")
    b.css("#tab-explain input[type=file]:not(#nd-file)").send_keys(str(tiny_chelsea(tmp_path)))
    heat = b.wait(lambda: (i := b.image_loaded("#explain-result img.hv-heat")) and i["width"] == 96 and i,
                  60, "the Grad-CAM heatmap of the uploaded 96 px image")
    assert heat["src"].startswith("data:image/png")
    assert b.image_loaded("#explain-result img.hv-base")["width"] == 96
    assert "Grad-CAM" in b.text("#tab-explain .meta")
    assert len(b.all("#targets .target")) == 5
    # Run as a job: the service answers 202 + Location; the page follows the job and shows the same view.
    b.click("#as-job")
    b.wait(lambda: b.all("#tab-explain .meta a[href^='#jobs/']") and b.image_loaded("#explain-result img.hv-heat"),
           60, "the explanation handed off to a job")
    b.click("#as-job")

    # Boxes and faithfulness numbers, then several methods side by side, on the bundled photo.
    b.click("#tab-explain [data-sample='chelsea']")
    b.wait(lambda: (i := b.image_loaded("#explain-result img.hv-heat")) and i["width"] > 96, 60, "the sample")
    b.click("#boxes")
    b.wait(lambda: b.all("#explain-result svg.hv-regions rect.box"), 60, "localization boxes")
    b.click("#faithfulness")
    b.wait(lambda: b.all("#faithfulness-numbers"), 60, "faithfulness numbers")
    assert "Deletion AUC" in b.text("#faithfulness-numbers")
    b.click("#compare-run")
    methods = [c.get_attribute("value") for c in b.all(".compare-checks input:checked")]
    assert {"gradcam", "gradcampp", "layercam"} <= set(methods)
    b.wait(lambda: all(b.image_loaded(f"#compare-grid .cell[data-method='{m}'] img.hv-heat") for m in methods),
           90, f"the comparison grid of {methods}")
    assert all("del" in f.text for f in b.all("#compare-grid .cell-foot"))  # faithfulness per method
    shot(b, "explorer-explain")
    assert_clean(b)


def test_deepdream_job_shows_progress_then_its_result(live: tuple[Browser, str]) -> None:
    b, base = live
    open_explorer(b, base, "jobs")
    b.wait(lambda: b.all("#job-type option[value='deepdream']"), 30, "the job types")
    select(b, "#job-type", "deepdream")
    b.js("document.querySelectorAll('.job-params details').forEach(d => d.open = true)")
    for name, value in {"octaves": 1, "steps": 4, "size": 48, "preview_every": 1}.items():
        b.fill(f".job-params [data-field='{name}']", value)
    b.click("#tab-jobs [data-sample='chelsea']")
    b.wait(lambda: b.all("#tab-jobs .dropzone.has-image"), 10, "the start image")
    b.click("#job-submit")
    b.wait(lambda: b.all("#job-detail [data-status='succeeded']"), 120, "the job to succeed")
    b.wait(lambda: b.image_loaded("#job-preview img"), 20, "the result picture")
    events = [li.text for li in b.all("#job-events li")]
    kinds = [next((k for k in ("progress", "preview", "done") if f" {k}" in t), "") for t in events]
    assert "progress" in kinds and "done" in kinds, events
    assert kinds.index("progress") < kinds.index("done"), events
    assert b.css("#job-detail [role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert b.all("#job-detail .chart path.chart-line"), "no objective curve"
    assert b.all(f"#job-list tr[data-id='{b.text('#job-detail .job-id')}']"), "the job is not in the list"
    shot(b, "explorer-jobs")
    assert_clean(b)


def test_internals_filters_activations_and_embedding_map(live: tuple[Browser, str]) -> None:
    from selenium.webdriver import ActionChains

    b, base = live
    open_explorer(b, base, "internals")
    b.wait(lambda: b.image_loaded("#filters-grid") and b.image_loaded("#activations-grid"), 60,
           "filters and activation maps")
    b.click("#collection-samples")
    b.wait(lambda: len(b.all(".coll-thumbs img")) == 4, 20, "the sample photos")
    b.click("#collection-upload")
    b.wait(lambda: b.all("#collection-id"), 30, "the uploaded collection")
    b.fill(".view-form [data-field='size']", 64)
    b.click("#view-run")
    b.wait(lambda: len(b.all(".map-point image")) == 4, 90, "the embedding map with the 4 photos")
    b.fit_window()  # the whole page in the window, so hovering scrolls nothing away
    point = b.all(".map-point")[0]
    b.js("arguments[0].scrollIntoView({block: 'center'})", point)
    ActionChains(b.driver).move_to_element(point).perform()
    b.wait(lambda: b.js("const t = document.querySelector('.map-tip'); return t && !t.hidden"), 10,
           "the hover tooltip")
    assert b.image_loaded(".map-tip img"), "the tooltip shows no image"
    shot(b, "explorer-internals", full_page=False)
    b.driver.set_window_size(b.width, b.height)
    assert_clean(b)


def test_swagger_ui_and_redoc_render_offline(live: tuple[Browser, str]) -> None:
    b, base = live
    b.get(base + "/docs")
    b.wait(lambda: len(b.all(".opblock")) >= 20, 60, "Swagger UI's operation blocks")
    assert any("/v1/models/{model}/explain/{method}" in e.text for e in b.all(".opblock-summary-path"))
    shot(b, "docs", full_page=False)
    assert_clean(b)
    b.get(base + "/redoc")
    b.wait(lambda: len(b.all("[data-section-id]")) >= 10, 60, "ReDoc's sections")
    assert "cnnviz" in b.driver.title
    shot(b, "redoc", full_page=False)
    assert_clean(b)


def test_trust_tab_evaluates_a_labelled_zip(live: tuple[Browser, str], tmp_path: Path) -> None:
    """The Trust tab uploads a ZIP with its labels file, runs an evaluation and shows the table and the grid."""
    import json
    import zipfile

    import skimage.data
    from PIL import Image

    zpath, lpath = tmp_path / "set.zip", tmp_path / "set.json"
    with zipfile.ZipFile(zpath, "w") as z:
        for name, arr in (("cat", skimage.data.chelsea()), ("cup", skimage.data.coffee()),
                          ("rocket", skimage.data.rocket())):
            buf = io.BytesIO()
            Image.fromarray(arr).resize((64, 48)).save(buf, "PNG")
            z.writestr(f"{name}.png", buf.getvalue())
    lpath.write_text(json.dumps({"labels": ["cat", "cup", "rocket"], "boxes": [[[10, 5, 50, 45]], [], []]}))
    b, base = live
    open_explorer(b, base, "trust")
    b.wait(lambda: len(b.all(".trust-methods input:checked")) == 3, 30, "the default methods")
    offered = {i.get_attribute("value") for i in b.all(".trust-methods input")}
    assert "gradcam" in offered and not {"drise", "attention_rollout"} & offered  # only what answers for Lite0
    # Run alone, this browser's first page load asked before the key was set: only those 401s may be logged.
    assert all("401" in e["message"] for e in b.console_errors())
    b.css("#trust-zip").send_keys(str(zpath))
    b.css("#trust-labels").send_keys(str(lpath))
    b.fill("#trust-steps", 4)
    b.fill("#trust-size", 64)
    select(b, "#trust-randomization", "cascading")
    b.click("#trust-run")
    b.wait(lambda: b.all(".trust-table tbody tr") and b.image_loaded("img[data-artifact='grid.png']"), 200,
           "the evaluation's table and grid")
    rows = [r.text for r in b.all(".trust-table tbody tr")]
    assert [r.split()[0] for r in rows[:3]] == ["gradcam", "guided_backprop", "saliency"]
    assert rows[3].startswith("random pixel order") and rows[4].startswith("centre baseline")
    shot(b, "explorer-trust")
    assert_clean(b)
