"""
The UI as a person uses it, in headless Chromium driven by selenium: from the repository list
to a tag to a layer, filtering, copying a pull command, deleting a tag as a user who may and
being refused as one who may not.  The screenshots in docs/ui/ are taken here, so they show
the current pages (written with TXREGISTRY_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import REPO_ROOT
from tests.ui import content
from tests.ui.conftest import PASSWORDS, Filled, run_gc

SCREENSHOTS = REPO_ROOT / "docs" / "ui"
WAIT = 10.0
# Chromium as root in a closed network: no sandbox, no GPU, nothing phoning home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,800",
]


def _missing() -> str | None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "chromium and chromium-driver are not installed (make tools installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Network.enable", {})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def sign_in(driver: Any, user: str) -> None:
    """Send this user's Basic credentials with every request of the page (as a browser does
    once the person answered its login prompt)."""
    header = content.basic(user, PASSWORDS[user])
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": header}})


def wait_for(driver: Any, condition: Any) -> Any:
    """Until ``condition(driver)`` is true; an element of the page being left (stale) or of
    the next one not there yet is "not yet", as the page may be navigating."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT, ignored_exceptions=ignored).until(condition)


def screenshot(driver: Any, name: str, size: tuple[int, int] | None = None) -> None:
    """
    Take the page's screenshot and check it is an image of the window; write it to docs/ui/
    only with ``TXREGISTRY_UPDATE_SCREENSHOTS=1`` (ports, digests and dates differ on every
    run, so rewriting them each time would only leave the work tree modified).
    """
    png: bytes = driver.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR", png[:16]
    width, height = struct.unpack(">II", png[16:24])
    if size is None:  # the window's viewport (an emulated device gives its own size)
        size = tuple(driver.execute_script("return [window.innerWidth, window.innerHeight]"))
    assert (width, height) == size, name
    if os.environ.get("TXREGISTRY_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(png)


def first_cells(driver: Any, table: str) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    return [row.find_element(By.TAG_NAME, "td").text for row in rows if row.is_displayed()]


def test_from_the_repository_list_to_a_tag_to_a_layer(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, "alice")
    browser.get(f"{filled.url}/ui/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Repositories"
    assert first_cells(browser, "repositories") == ["secret/db", "team/app", "team/lib"]
    screenshot(browser, "repositories")
    browser.find_element(By.LINK_TEXT, "team/app").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "team/app")
    assert first_cells(browser, "tags") == ["multi", "v1"]
    screenshot(browser, "repository")
    browser.find_element(By.LINK_TEXT, "multi").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "team/app:multi")
    assert first_cells(browser, "platforms") == ["linux/amd64", "linux/arm64"]
    screenshot(browser, "index")
    browser.back()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "team/app")
    browser.find_element(By.LINK_TEXT, "v1").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "team/app:v1")
    referrers = browser.find_element(By.ID, "referrers").text
    assert content.SBOM_TYPE in referrers and content.SIGNATURE_TYPE in referrers
    screenshot(browser, "manifest")
    browser.find_elements(By.CSS_SELECTOR, "#layers tbody a")[1].click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text.startswith("Layer "))
    text = browser.find_element(By.TAG_NAME, "main").text
    assert filled.image.layers[1] in text
    assert "RUN make install" in text


def test_filter_tags_and_search_repositories(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sign_in(browser, "alice")
    browser.get(f"{filled.url}/ui/r/team/app")
    field = browser.find_element(By.ID, "q")
    field.send_keys("mul")
    # The script filters the rows shown as the person types...
    wait_for(browser, lambda d: first_cells(d, "tags") == ["multi"])
    # ...and the form, submitted, filters on the server (for rows on other pages).
    field.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: "q=mul" in d.current_url)
    assert first_cells(browser, "tags") == ["multi"]
    browser.get(f"{filled.url}/ui/")
    search = browser.find_element(By.ID, "q")
    search.send_keys("lib", Keys.ENTER)
    wait_for(browser, lambda d: "q=lib" in d.current_url)
    assert first_cells(browser, "repositories") == ["team/lib"]


def test_copy_a_pull_command(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, "alice")
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": filled.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    browser.get(f"{filled.url}/ui/r/team/app/-/manifest/v1")
    button = browser.find_element(
        By.CSS_SELECTOR, "button[aria-label='Copy the pull command by tag']"
    )
    button.click()
    wait_for(browser, lambda d: button.text == "Copied")
    pasted = browser.execute_async_script(
        "var done = arguments[0];"
        "navigator.clipboard.readText().then(done, function (e) { done('error: ' + e); });"
    )
    host = filled.url.removeprefix("http://")
    assert pasted == f"docker pull {host}/team/app:v1"


def test_delete_a_tag_as_alice_and_be_refused_as_bob(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By

    alice = filled.client("alice")
    content.push_image(alice, "team/app", "old")
    content.push_image(alice, "team/app", "older")
    sign_in(browser, "bob")
    browser.get(f"{filled.url}/ui/r/team/app")
    assert "old" in first_cells(browser, "tags")
    assert browser.find_elements(By.CSS_SELECTOR, "form.delete") == []  # bob may not delete
    sign_in(browser, "alice")
    browser.get(f"{filled.url}/ui/r/team/app")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Delete tag old']").click()
    wait_for(browser, lambda d: d.switch_to.alert).accept()
    wait_for(browser, lambda d: "deleted=old" in d.current_url)
    assert browser.find_element(By.CSS_SELECTOR, "p.message").text == "Deleted old."
    assert "old" not in first_cells(browser, "tags")
    status, _, _ = alice.request("GET", "/v2/team/app/manifests/old")
    assert status == 404
    # The same button submitted with bob's credentials is refused, and nothing is deleted.
    sign_in(browser, "bob")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Delete tag older']").click()
    wait_for(browser, lambda d: d.switch_to.alert).accept()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Access denied")
    assert "repository:team/app:delete" in browser.find_element(By.TAG_NAME, "main").text
    status, _, _ = alice.request(
        "HEAD", "/v2/team/app/manifests/older", None, {"Accept": content.OCI_MANIFEST}
    )
    assert status == 200


def test_cache_and_storage_pages(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By

    run_gc(filled)
    sign_in(browser, "alice")
    browser.get(f"{filled.url}/ui/storage")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Storage and operations"
    assert "Mode\ndry run" in browser.find_element(By.TAG_NAME, "main").text
    screenshot(browser, "storage")
    browser.find_element(By.LINK_TEXT, "Cache").click()
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == "Cache")


def test_readable_on_a_phone(browser: Any, filled: Filled) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, "alice")
    # A phone's screen, honouring <meta name="viewport">, as Chromium's device emulation does.
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        browser.get(f"{filled.url}/ui/r/team/app/-/manifest/v1")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        # Nothing but the tables (which scroll inside their own box) is wider than the screen.
        # (Not window.innerWidth: on a phone the layout viewport widens to what overflows.)
        screen = metrics["width"]
        wide = browser.execute_script(
            "return Array.from(document.querySelectorAll('body *'))"
            f".filter(e => e.getBoundingClientRect().right > {screen} + 1)"
            ".map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"
            ".slice(0, 8)"
        )
        assert width <= screen, wide
        assert browser.find_element(By.TAG_NAME, "h1").is_displayed()
        screenshot(browser, "phone", (metrics["width"], metrics["height"]))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
