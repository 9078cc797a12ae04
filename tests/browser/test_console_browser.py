"""The console in a real browser (headless Chromium through Selenium, see conftest.py).

1. A person's path: sign in with a password and a TOTP code (pyotp computes it), create an API key, see it
   once with its copy button (the console's only script, a static file the CSP allows), not again after a
   reload, revoke it, and find both changes on the events page with its filters. A screenshot at each step.
2. Hostile values stored everywhere a page shows one (tests/integration/test_console.py stores them) seen
   by the browser: no dialog opens, nothing they carry runs (they would set ``window.__xss`` and the
   document title), no element they describe exists, and the CSP never has to block anything — they are
   text. A control page proves the same probes do see a script that runs.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..integration.test_admin import wait_for
from ..integration.test_admin_accounts import PASSWORD, Admin, signed_in
from ..integration.test_console import (
    IMG_TRACE,
    PAYLOADS,
    SCRIPT_TRACE,
    SVG_TRACE,
    P,
    api,
    console_gateway,
    events_of,
    hostile_pages,
    store_hostile,
)
from ..support import EchoUpstream, GatewayThread

pytestmark = pytest.mark.slow


def screenshot(driver: Any, path: Path) -> Path:
    """The whole page (beyond the window), as a PNG."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    with EchoUpstream() as up:
        gateway = console_gateway(up, tmp_path_factory.mktemp("browser") / "bastion.db")
        with gateway:
            with api(gateway) as client:
                client.post(f"{P}/consumers", json={"name": "shop", "scopes": ["orders:read"]})
            yield gateway


class Person:
    """Someone using the console in the browser, with a screenshot at each step."""

    def __init__(self, driver: Any, gw: GatewayThread, artifacts: Path, name: str) -> None:
        self.driver = driver
        self.base = f"http://127.0.0.1:{gw.admin_port}"
        self.dir = artifacts / name
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):
            old.unlink()
        self.shots: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.base)

    def shot(self, step: str) -> Path:
        made = screenshot(self.driver, self.dir / f"{len(self.shots) + 1:02d}-{step}.png")
        assert made.stat().st_size > 5000 and made.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", made
        self.shots.append(made)
        return made

    def by_id(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def wait(self, predicate: Any, what: str) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, 10, poll_frequency=0.05).until(lambda _d: predicate(), message=what)

    def type_into(self, element_id: str, text: str) -> None:
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(text)

    def sign_in(self, admin: Admin, email: str) -> None:
        """Password, then a TOTP code computed by pyotp from the account's secret."""
        self.open("/console/keys")
        self.wait(lambda: self.path() == "/console/sign-in", "the sign-in page")
        self.shot("sign-in")
        self.type_into("email", email)
        self.type_into("password", PASSWORD)
        self.css("form[action='/console/sign-in'] button[type=submit]")[0].click()
        self.wait(lambda: self.path() == "/console/mfa", "the MFA page")
        self.shot("mfa")
        self.type_into("code", admin.next_code())
        self.css("form[action='/console/mfa'] button[type=submit]")[0].click()
        self.wait(lambda: self.path() == "/console/keys", "the console")

    def no_dialog(self) -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, 0.3).until(expected_conditions.alert_is_present())
        except TimeoutException:
            return
        text = self.driver.switch_to.alert.text
        self.driver.switch_to.alert.dismiss()
        raise AssertionError(f"a dialog opened on {self.path()}: {text!r}")

    def traces(self) -> dict[str, Any]:
        """What a hostile value would have left had it run, and the page's scripts and images."""
        return dict(
            self.driver.execute_script(
                "return {xss: typeof window.__xss === 'undefined' ? null : window.__xss,"
                " title: document.title,"
                " images: document.images.length,"
                " scripts: Array.from(document.scripts).map(s => s.getAttribute('src')),"
                " handlers: Array.from(document.querySelectorAll('*')).flatMap("
                "   e => Array.from(e.attributes).filter(a => a.name.startsWith('on')).map(a => a.name)),"
                " javascriptUrls: Array.from(document.querySelectorAll('[href],[src],[action]')).filter("
                "   e => /^\\s*javascript:/i.test(e.getAttribute('href') || e.getAttribute('src') ||"
                "   e.getAttribute('action') || '')).length,"
                " text: document.body.innerText}"
            )
        )

    def console_messages(self) -> list[str]:
        """Browser console messages, but the missing favicon (the admin listener has none)."""
        return [m["message"] for m in self.driver.get_log("browser") if "favicon.ico" not in m["message"]]


def test_sign_in_create_a_key_see_it_once_revoke_it_and_filter_events(
    driver: Any, gw: GatewayThread, artifacts: Path
) -> None:
    admin = signed_in(gw, "browser-op", "operator")  # enrolled over the API: pyotp holds the secret
    admin.call("POST", f"{P}/auth/logout")
    person = Person(driver, gw, artifacts, "key-lifecycle")
    try:
        person.sign_in(admin, "browser-op@example.com")
    finally:
        admin.close()
    assert "browser-op (operator)" in person.driver.find_element("css selector", "header").text
    person.shot("keys")

    # create a key
    details = person.css("details.card")[0]
    if details.get_attribute("open") is None:
        details.find_element("css selector", "summary").click()
    from selenium.webdriver.support.ui import Select

    Select(person.by_id("k-consumer")).select_by_visible_text("shop")
    person.type_into("k-name", "made in the browser")
    person.type_into("k-ttl", "7d")
    person.shot("new-key-form")
    person.by_id("create-key").click()
    person.wait(lambda: person.css("#secret-value"), "the new key")
    key = person.by_id("secret-value").text
    assert re.fullmatch(r"bst_[A-Za-z0-9]+_[A-Za-z0-9]+", key), key
    copy = person.by_id("copy-secret")
    assert copy.is_displayed()  # console.js ran (script-src 'self') and revealed the copy button
    person.shot("key-shown-once")
    copy.click()
    person.wait(lambda: copy.text in ("Copied", "Select and copy"), "the copy button's answer")
    key_id = key.split("_")[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=15) as client:
        assert client.get("/v1/secure", headers={"x-api-key": key}).status_code == 200

    # a reload does not show it again
    person.driver.refresh()
    person.wait(lambda: person.css(f"#key-{key_id}"), "the key's row")
    assert not person.css("#secret-value") and key not in person.driver.page_source
    assert not person.css("script")  # no secret on the page, no script either
    person.shot("reloaded-key-gone")

    # revoke it
    row = person.by_id(f"key-{key_id}")
    assert "active" in row.text
    row.find_element("css selector", f"form[action='/console/keys/{key_id}/revoke'] button").click()
    person.wait(lambda: f"Key {key_id} revoked." in person.driver.page_source, "the revocation notice")
    assert "revoked" in person.by_id(f"key-{key_id}").text
    person.shot("key-revoked")
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=15) as client:
        assert client.get("/v1/secure", headers={"x-api-key": key}).status_code == 401

    # filter the events: what happened to this key
    wait_for(lambda: len(events_of(gw, resource=f"api_key:{key_id}")) >= 2, what="the key's events")
    person.open("/console/events")
    person.shot("events")
    person.type_into("f-type", "api_key.")
    person.type_into("f-resource", f"api_key:{key_id}")
    person.type_into("f-since", "1h")
    Select(person.by_id("f-page_size")).select_by_visible_text("25")
    person.by_id("apply-filters").click()
    person.wait(lambda: "resource=api_key" in person.path(), "the filtered page")
    rows = person.css("#events tbody tr")
    types = [r.find_elements("css selector", "td")[1].text for r in rows]
    assert sorted(types) == ["api_key.created", "api_key.revoked"], types
    assert all(f"api_key:{key_id}" in r.text and "admin:browser-op" in r.text for r in rows)
    assert person.by_id("f-resource").get_attribute("value") == f"api_key:{key_id}"
    person.shot("events-filtered")
    # and by actor, following a link in the table
    person.css("#events tbody tr td a[href*='actor=']")[0].click()
    person.wait(lambda: "actor=admin" in person.path(), "the actor filter")
    assert person.by_id("f-actor").get_attribute("value") == "admin:browser-op"
    assert len(person.css("#events tbody tr")) >= 2
    person.shot("events-by-actor")
    assert len(person.shots) == 10
    assert not [m for m in person.console_messages() if "Content Security Policy" in m or "console.js" in m]


def test_hostile_values_stay_text_in_a_real_browser(driver: Any, gw: GatewayThread, artifacts: Path) -> None:
    person = Person(driver, gw, artifacts, "hostile-values")
    # the control: the probes do see a script that runs (here on a page of the test's own)
    person.driver.get(
        "data:text/html,<title>t</title><img src=x onerror=\"window.__xss=2;document.title='pwned'\">"
    )
    control = person.wait(lambda: person.traces()["xss"] == 2 and person.traces(), "the control page")
    assert control["title"] == "pwned" and control["handlers"] == ["onerror"]

    made = store_hostile(gw)
    event_id = events_of(gw, type="request.denied", source_ip="203.0.113.66")[0]["id"]
    admin = signed_in(gw, "browser-admin", "admin")
    admin.call("POST", f"{P}/auth/logout")
    try:
        person.sign_in(admin, "browser-admin@example.com")
    finally:
        admin.close()
    person.driver.get_log("browser")  # start counting from here
    seen = ""
    for i, path in enumerate(hostile_pages(made, event_id)):
        person.open(path)
        person.wait(lambda: person.driver.execute_script("return document.readyState") == "complete", path)
        time.sleep(0.05)  # a handler that would fire on load has fired by now
        person.no_dialog()
        traces = person.traces()
        assert traces["xss"] is None, (path, traces["xss"])
        assert "pwned" not in traces["title"], path
        assert traces["images"] == 0 and traces["handlers"] == [] and traces["javascriptUrls"] == 0, path
        assert traces["scripts"] == [], (path, traces["scripts"])
        seen += traces["text"]
        slug = re.sub(r"[^a-z0-9]+", "-", path.split("?")[0].removeprefix("/console/"))[:40]
        person.shot(f"{i:02d}-{slug}")
    for payload in (SCRIPT_TRACE, IMG_TRACE, SVG_TRACE, *PAYLOADS[:3]):
        assert payload in seen, f"{payload!r} was not displayed as text"
    messages = person.console_messages()
    assert not [m for m in messages if "Content Security Policy" in m], messages  # nothing had to be blocked
