"""index.html renders in headless Chromium: tables, images, no console errors.

Chromium comes from Debian (``tools/ensure-chromium.sh``, called by ``make test``); the test
skips with the reason when it is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not CHROMEDRIVER.exists() or not (shutil.which("chromium")
                                         or shutil.which("chromium-browser")):
        pytest.skip("Chromium/chromedriver not installed (run tools/ensure-chromium.sh as root)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    yield driver
    driver.quit()


def test_index_renders(browser, cli_report):
    from selenium.webdriver.common.by import By

    out = cli_report[1]
    browser.get((out / "index.html").resolve().as_uri())
    assert browser.title.startswith("SmartMixed analysis: exp")
    tables = browser.find_elements(By.TAG_NAME, "table")
    assert len(tables) >= 15
    ids = {h.get_attribute("id") for h in browser.find_elements(By.TAG_NAME, "h2")}
    assert {"summary", "headline", "budgets", "rankings", "mrr", "friedman", "control", "iqm",
            "improvement", "selection", "weights"} <= ids
    ranking_rows = browser.find_elements(By.CSS_SELECTOR, "#rankings ~ div table tbody tr")
    assert len(ranking_rows) >= 8
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 9
    for img in images:
        width = browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img)
        assert width and width > 0, img.get_attribute("alt")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
