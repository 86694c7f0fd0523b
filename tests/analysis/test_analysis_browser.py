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


# Draws the image on a canvas (data: URIs do not taint it) and measures its pixels.
PIXELS = """
const img = arguments[0];
const out = {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
             ink: 0, colours: 0};
if (!img.complete || !img.naturalWidth) return out;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
const seen = new Set();
let ink = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) ink++;
  if (seen.size < 64) seen.add((d[i] >> 4) * 256 + (d[i + 1] >> 4) * 16 + (d[i + 2] >> 4));
}
out.ink = ink / (d.length / 4); out.colours = seen.size;
return out;
"""


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
    assert len(images) == 11
    for img in images:
        alt = img.get_attribute("alt")
        browser.execute_script("arguments[0].scrollIntoView()", img)
        info = browser.execute_script(PIXELS, img)
        assert info["complete"] and info["width"] > 100 and info["height"] > 50, (alt, info)
        # real content: a plot has ink (non-white pixels) in several colours, not a blank
        assert info["ink"] > 0.01 and info["colours"] >= 3, (alt, info)
        shown = browser.execute_script("return arguments[0].getBoundingClientRect().width", img)
        assert shown > 100, alt  # laid out on the page, not collapsed
    more = browser.find_elements(By.CSS_SELECTOR, "p.more a")
    assert [a.get_attribute("href").rsplit("/", 1)[1] for a in more] == []  # all fit: no links
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
