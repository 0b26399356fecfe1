"""A headless Chromium for the board's browser tests: Debian's chromium and chromium-driver,
driven by Selenium 4. Registered in conftest.py's ``pytest_plugins``: a test names ``chromium``.

The browser runs in a time zone that is neither the site's (Asia/Shanghai) nor the machine's
(UTC), so a page that formatted a time in the browser's own zone would show it.
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_TZ = "America/New_York"


def make_driver(width: int = 1400, height: int = 1000, tz: str | None = BROWSER_TZ) -> WebDriver:
    # imported here: conftest loads this module for every test, and selenium is a dev extra
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    env = {**os.environ, "TZ": tz} if tz else None  # chromedriver passes its environment to the browser
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, env=env))


@pytest.fixture(scope="session")
def chromium() -> Iterator[WebDriver]:
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("the board's browser tests need selenium (pip install -e '.[dev]')")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"the board's browser tests need Debian's chromium and chromium-driver "
                    f"(apt-get install chromium chromium-driver): {', '.join(missing)} not found")
    driver = make_driver()
    yield driver
    driver.quit()
