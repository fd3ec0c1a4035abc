"""Fixtures and helpers of the browser tests: one Chromium per module (Debian's
``/usr/bin/chromium`` driven by Playwright), ``msgtrack serve`` on the web API tests'
scenario, a page that records script errors and CSP violations, screenshots.

Without Chromium or Playwright these tests skip, except under CI, where they fail.
Loaded by conftest.py as a plugin, so every browser test file gets the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port, running
from msgtrack.context import Context
from test_web_api import PASSWORD, build_scenario

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests need Chromium and Playwright under CI: {reason}")
    pytest.skip(
        f"browser tests skipped: {reason} (apt-get install chromium; pip install playwright)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the whole module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


@contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``msgtrack serve`` on the test's database, its times shown in Paris: its base URL."""
    port = free_port()
    server_env = {**env, "MSGTRACK_TIMEZONE": "Europe/Paris"}
    with running(
        server_env, "serve", "--port", str(port), port=port, output=tmp_path / "serve.log"
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def site(ctx: Context, env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The web API tests' scenario, served. A test module may override this fixture with
    its own data; ``page`` then opens that site."""
    scenario = build_scenario(ctx)
    with serving(env, tmp_path) as base:
        yield base, scenario


@pytest.fixture
def page(browser: Any, site: tuple[str, Any]) -> Iterator[Any]:
    context = browser.new_context(base_url=site[0], accept_downloads=True)
    context.set_default_timeout(10_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.problems = problems
    yield tab
    context.close()


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any) -> None:
    page.goto("/deliveries")
    assert page.url.endswith("/signin")
    shoot(page, "signin")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/deliveries")


def cells(page: Any, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))",
    )
