"""A headless Debian ``chromium`` driven by selenium through ``chromium-driver``, for the explorer tests.

The browser is started with every host name except 127.0.0.1 mapped to nowhere, so a page that
tried to load anything from the internet would visibly break; the tests also read what was
requested (the Resource Timing entries and the DevTools network log) and the console log.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
LOCAL_SCHEMES = ("data", "blob", "about", "chrome-error")


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when Debian's chromium and chromium-driver are not installed."""
    browser = next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None) or shutil.which("chromium")
    driver = next((p for p in DRIVER_CANDIDATES if Path(p).exists()), None) or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class Browser:
    """One headless chromium window with helpers to wait, read logs and take screenshots."""

    def __init__(self, browser_path: str, driver_path: str, width: int = 1440, height: int = 960) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = browser_path
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-default-apps",
                    "--disable-extensions", "--disable-features=Translate,OptimizationHints,MediaRouter",
                    # Offline on purpose: any host but 127.0.0.1 resolves to nothing.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--lang=en-US"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        self.driver.set_page_load_timeout(30)
        self.width = width
        self.height = height

    def close(self) -> None:
        self.driver.quit()

    # --- navigation and waiting -----------------------------------------------------------------
    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, predicate: Callable[[], Any], timeout_s: float = 30, what: str = "condition",
             interval_s: float = 0.1) -> Any:
        """Poll until predicate() is truthy; its value. AssertionError naming what on timeout."""
        deadline = time.monotonic() + timeout_s
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - the DOM may be mid-update; try again
                last_exc = exc
            time.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}"
                             + (f" (last error: {last_exc})" if last_exc else ""))

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def click(self, selector: str) -> None:
        """Scroll the element to the middle of the window (clear of the sticky bar) and click it."""
        el = self.css(selector)
        self.js("arguments[0].scrollIntoView({block: 'center'})", el)
        el.click()

    def fill(self, selector: str, value: object) -> None:
        """Replace an input's value as a user would (select all, type), then leave the field."""
        from selenium.webdriver.common.keys import Keys

        el = self.css(selector)
        self.js("arguments[0].scrollIntoView({block: 'center'})", el)
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(str(value), Keys.TAB)

    def text(self, selector: str) -> str:
        els = self.all(selector)
        return els[0].text if els else ""

    def image_loaded(self, selector: str) -> dict[str, Any] | None:
        """{src, width, height} of the first matching <img> once decoded, else None."""
        return self.js("""
            const img = document.querySelector(arguments[0]);
            if (!img || !img.complete || !img.naturalWidth) return null;
            return {src: img.currentSrc.slice(0, 40), width: img.naturalWidth, height: img.naturalHeight};
        """, selector)

    # --- what the page did ----------------------------------------------------------------------
    def console_errors(self) -> list[dict[str, Any]]:
        """SEVERE console entries since the last call (reading the log clears it)."""
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for since the last call: DevTools network log plus Resource Timing."""
        urls = []
        for entry in self.driver.get_log("performance"):
            try:
                msg = json.loads(entry["message"])["message"]
            except (KeyError, ValueError):
                continue
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        urls += self.js("return performance.getEntriesByType('navigation').concat("
                        "performance.getEntriesByType('resource')).map(e => e.name)") or []
        return urls

    @staticmethod
    def foreign(urls: list[str], host: str = "127.0.0.1") -> list[str]:
        """The URLs that would leave ``host`` (data:, blob: and about: stay in the browser)."""
        out = []
        for u in urls:
            p = urlparse(u)
            if p.scheme in LOCAL_SCHEMES:
                continue
            if p.hostname != host:
                out.append(u)
        return sorted(set(out))

    def fit_window(self, max_height: int = 2600) -> None:
        """Scroll to the top and make the window as tall as the document (capped)."""
        self.js("window.scrollTo(0, 0)")
        h, chrome = self.js("return [Math.ceil(document.documentElement.scrollHeight),"
                            " window.outerHeight - window.innerHeight]")
        self.driver.set_window_size(self.width, max(self.height, min(int(h) + int(chrome), max_height)))
        time.sleep(0.3)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (the whole document height, capped, when full_page), overwriting path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.js("window.scrollTo(0, 0)")
        if full_page:
            self.fit_window()
        self.driver.save_screenshot(str(path))
        if full_page:
            self.driver.set_window_size(self.width, self.height)
        return path
