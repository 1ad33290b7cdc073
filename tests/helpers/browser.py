"""Headless Chromium for the page tests (``cli.py view``): the Debian ``chromium`` and its
``chromedriver``, driven by selenium, started as a closed network's root user must; tests skip
with the reason when any of the three is absent."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def skip_without_browser() -> None:
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (Path(path).exists() or shutil.which(path)):
            pytest.skip(f"{what} not found at {path} (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e .[dev])")


@contextlib.contextmanager
def chromium() -> Iterator:
    """A selenium Chrome driver on the system's chromium, with a fresh profile folder."""
    skip_without_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver online
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS + (f"--user-data-dir={profile}",):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver, css: str, timeout: float = 10.0):
    """The elements matching ``css`` once there is one (TimeoutException otherwise)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
    return driver.find_elements(By.CSS_SELECTOR, css)


def assert_not_blank(png: bytes) -> None:
    """A screenshot with something drawn on it: many colours, not one flat field."""
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert pixels.std() > 10 and colours > 30, (pixels.std(), colours)
