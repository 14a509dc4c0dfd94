"""Headless Chromium for the explorer tests (Debian's chromium + chromium-driver, Selenium):
``REASON`` is why they cannot run here (None when they can), ``start()`` opens a browser,
``errors(driver)`` lists the page's console errors."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _reason() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "no chromium / chromedriver (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no selenium (pip install selenium; it is in the dev extras)"
    return None


REASON = _reason()


def start() -> Any:
    """A headless Chromium, 1400 x 1000, keeping the console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def errors(driver: Any) -> list[str]:
    """The console's SEVERE messages since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
