"""A real headless Chromium for tests (Debian's chromium and chromedriver, driven by
Selenium)."""

from __future__ import annotations

import shutil
from typing import Any

from tests.conftest import missing_peer


def headless_chromium() -> Any:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing_peer("Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                     "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)
