"""End to end: the web page of ``headstart serve`` in headless Chromium, against the real service and a real model.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (scripts/setup-env.sh installs them when it can) and
selenium (the ``test`` extra); skipped with the reason when any is missing.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import Server, running_server

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "hymenoptera_sample"
PAGE_TIMEOUT_S = 60.0


def _find(name: str, default: str) -> str | None:
    if Path(default).is_file():
        return default
    return shutil.which(name)


CHROMIUM = _find("chromium", "/usr/bin/chromium")
CHROMEDRIVER = _find("chromedriver", "/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="headless browser test needs chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver); "
               "install them with `sudo apt-get install -y chromium chromium-driver` (scripts/setup-env.sh tries)",
    ),
]


def _multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n".encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _predict_file(server: Server, path: Path) -> dict:
    body, content_type = _multipart(path)
    request = urllib.request.Request(server.origin + "/predict", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(hymenoptera_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``headstart serve`` on a free loopback port, stopped at the end of the module."""
    with running_server(hymenoptera_bundle, tmp_path_factory.mktemp("web-serve")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", "--window-size=1200,900"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_state(driver, states: set[str], timeout: float = PAGE_TIMEOUT_S) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in states)
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def _error_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "error").text


def _open(driver, server: Server) -> None:
    driver.get(server.origin + "/")
    state = _wait_state(driver, {"ready", "error"})
    assert state == "ready", f"page did not load the model information: {_error_text(driver)!r}\n{server.output()}"


def test_page_classifies_a_photo_like_the_api(server: Server, browser) -> None:
    from selenium.webdriver.common.by import By

    metadata = server.get_json("/metadata")
    assert metadata["task"] == "image"
    classes = metadata["classes"]
    assert sorted(classes) == ["ants", "bees"]

    # A val photo of a bee that the model gets right, found through the API itself.
    photo, expected = None, None
    for candidate in sorted((SAMPLE / "val" / "bees").glob("*.jpg")):
        prediction = _predict_file(server, candidate)["predictions"][0]
        if prediction["label"] == "bees":
            photo, expected = candidate, prediction
            break
    assert photo is not None and expected is not None, "the bundle classifies no val photo of a bee as 'bees'"

    _open(browser, server)
    header = browser.find_element(By.ID, "model-info").text
    assert "image" in header and metadata["backend"] in header, header

    browser.find_element(By.ID, "file-input").send_keys(str(photo))
    state = _wait_state(browser, {"done", "error"})
    assert state == "done", f"prediction failed in the page: {_error_text(browser)!r}\n{server.output()}"

    assert browser.find_element(By.ID, "top-label").text == expected["label"] == "bees"
    assert [e.text for e in browser.find_elements(By.CLASS_NAME, "top-label")] == ["bees"]
    bars = browser.find_elements(By.CSS_SELECTOR, ".result .bar")
    assert len(bars) == min(int(metadata["top_k"]), len(classes))
    assert "bees" in bars[0].text and "%" in bars[0].text
    assert browser.find_element(By.CSS_SELECTOR, "#preview img").get_attribute("alt") == photo.name
    assert _error_text(browser) == ""

    # Nothing was fetched from anywhere but this service (blob: URLs are the page's own previews).
    urls = browser.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));")
    local = (server.origin + "/", f"blob:{server.origin}/", "data:")
    assert [u for u in urls if not u.startswith(local)] == [], urls
    assert any(u.startswith(server.origin + "/predict") for u in urls), urls


def test_page_shows_the_error_of_an_unreadable_upload(server: Server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    broken = tmp_path / "not-a-photo.jpg"
    broken.write_text("this is text, not a JPEG\n")
    _open(browser, server)
    browser.find_element(By.ID, "file-input").send_keys(str(broken))
    assert _wait_state(browser, {"done", "error"}) == "error", browser.find_element(By.ID, "results").text
    error = browser.find_element(By.ID, "error")
    assert error.get_attribute("role") == "alert"
    assert error.text.strip(), "the error element is empty"
    assert browser.find_elements(By.CLASS_NAME, "top-label") == []
