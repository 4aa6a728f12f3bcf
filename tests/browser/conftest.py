"""Fixtures for the explorer's browser tests: the live stack of ``tests/jobs`` (a real Redis, the API
under uvicorn and a real worker process) and one headless Debian chromium for the whole session.

The stack fixtures are imported from ``tests/jobs/conftest.py``, not copied, so both suites start
the service the same way. Without chromium and chromium-driver (``apt-get install -y chromium
chromium-driver``, which ``.ci/run`` does) every test here is skipped, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import conftest as jobs_conftest
from jobs.jobkit import KEY_A, ROOT, Stack

from .browser import Browser, find_chromium

# The live stack of tests/jobs, re-exported (not copied): a Redis, the API under uvicorn, a worker.
redis_url = jobs_conftest.redis_url
stack = jobs_conftest.stack
pytest_runtest_makereport = jobs_conftest.pytest_runtest_makereport  # sets rep_call, for the logs on failure

SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of the browser and its driver, or a skip that says how to install them."""
    found = find_chromium()
    if found is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    return found


@pytest.fixture(scope="session")
def browser(chromium: tuple[str, str]) -> Iterator[Browser]:
    b = Browser(*chromium)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def live(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[tuple[Browser, str]]:
    """The browser (logs drained) and the base URL of the live API; prints the service logs on failure.

    ``browser`` comes first so a machine without chromium skips before the stack is started.
    """
    stack.workers = [w for w in stack.workers if w.alive()]
    if not stack.workers:
        stack.start_worker()
        stack.wait_workers(1)
    browser.driver.get("about:blank")
    browser.console_errors()
    browser.driver.get_log("performance")
    yield browser, stack.base
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(stack.logs())  # noqa: T201 - shown by pytest only for the failed test


def open_explorer(b: Browser, base: str, hash_: str = "explain") -> None:
    """Load the explorer with the test key already stored (as after a user typed it once)."""
    b.get(f"{base}/ui/")
    b.js("localStorage.setItem('cnnviz.apiKey', arguments[0])", KEY_A)
    b.get(f"{base}/ui/#{hash_}")
    b.driver.refresh()
    b.wait(lambda: b.js("return document.body.classList.contains('ready')"), 60, "the catalog to load")


def shot(b: Browser, name: str, full_page: bool = True) -> Path:
    """Save docs/screenshots/<name>.png (overwritten on every run; the README shows these)."""
    return b.screenshot(SCREENSHOTS / f"{name}.png", full_page=full_page)
