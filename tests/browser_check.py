"""Open a report.html in headless Chromium (Debian's /usr/bin/chromium via selenium and /usr/bin/chromedriver),
check it the way a user would see it, and save screenshots.

    python tests/browser_check.py runs/digits/report.html test-artifacts/report.png

Nothing is downloaded: the browser and driver are the system's, Selenium Manager is kept offline, and the
report's own Content-Security-Policy forbids any fetch (a violation would show up as a console error).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM = Path(os.environ.get("BAYESVAE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BAYESVAE_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars")


def missing() -> str | None:
    """Why the browser check cannot run here, or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing (pip install selenium)"
    return None


def check_report(html_path: str | Path, screenshot: str | Path | None = None) -> dict:
    """Load the report, hover two points of the explorer plane and return what was observed:

    ``console`` (SEVERE console entries), ``images`` (src prefix and naturalWidth of every <img>),
    ``resources`` (network resources the page fetched), ``cells``/``readouts``/``pixels`` (explorer state after
    each of the two pointer moves), ``title``.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    profile = tempfile.mkdtemp(prefix="bayesvae-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(html_path).resolve().as_uri())
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const imgs = Array.from(document.images);
            Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })))
                   .then(() => done(true));""")
        result: dict = {"title": driver.title}
        result["images"] = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src').slice(0, 22), i.naturalWidth]);")
        result["resources"] = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);")
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        plane = driver.find_elements(By.ID, "explorer-plane")
        result["cells"], result["readouts"], result["pixels"] = [], [], []
        if plane:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plane[0])
            for dx, dy in ((-120, -120), (110, 130)):  # offsets from the canvas centre (360 x 360 px)
                ActionChains(driver).move_to_element_with_offset(plane[0], dx, dy).perform()
                result["cells"].append(driver.execute_script(
                    "return document.getElementById('explorer-output').getAttribute('data-cell');"))
                result["readouts"].append(driver.find_element(By.ID, "explorer-readout").text)
                result["pixels"].append(driver.execute_script(
                    "return document.getElementById('explorer-output').toDataURL('image/png');"))
            if screenshot is not None:
                section = driver.find_element(By.ID, "explorer")
                section.screenshot(str(Path(screenshot).with_name(Path(screenshot).stem + "-explorer.png")))
        if screenshot is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(1280, min(int(height) + 40, 16000))
            driver.execute_script("window.scrollTo(0, 0);")
            driver.save_screenshot(str(screenshot))
        result["console"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        return result
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/browser_check.py REPORT.html [SCREENSHOT.png]")
    why = missing()
    if why:
        sys.exit(why)
    out = check_report(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    out["pixels"] = [p[:40] + "..." for p in out["pixels"]]
    print(json.dumps(out, indent=2))
