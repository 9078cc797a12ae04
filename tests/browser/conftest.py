"""Headless Chromium for the console's browser tests, driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs both); Selenium is pointed at
``/usr/bin/chromedriver`` and the system browser explicitly, so nothing is ever downloaded. Without a
chromium the tests are skipped with the reason (``BASTION_SKIP_BROWSER=1`` skips them too); with chromium but
no chromedriver they fail, saying what to install.

Screenshots are test artefacts: ``tests/browser/artifacts/`` (or ``$BASTION_ARTIFACTS``), never committed;
the directory is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("BASTION_ARTIFACTS") or Path(__file__).parent / "artifacts")
_used: list[Path] = []


def chromium_binary() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.path.exists("/usr/bin/chromium"):
        found = "/usr/bin/chromium"
    return found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _used:
        terminalreporter.write_line(f"console browser screenshots: {_used[0]}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    root = ARTIFACTS / "console"
    root.mkdir(parents=True, exist_ok=True)
    if not _used:
        _used.append(root)
        print(f"console browser screenshots: {root}")
    return root


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    if os.environ.get("BASTION_SKIP_BROWSER") == "1":
        pytest.skip("BASTION_SKIP_BROWSER=1: the console is not tested in a browser")
    binary = chromium_binary()
    if binary is None:
        pytest.skip(
            "chromium is not installed, so the console cannot be tested in a browser: "
            "apt-get install chromium chromium-driver"
        )
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not os.path.exists(chromedriver):
        pytest.fail(
            "chromium is installed but chromedriver is not: apt-get install chromium-driver "
            "(Selenium is pointed at it explicitly; it never downloads a driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",  # a laptop screen
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()
