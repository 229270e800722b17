"""The dashboard in a real browser (headless Chromium driven by Playwright) against a real stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Stack, missing, wait_for
from tests.functions import basic

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOWN = ("queued", "running", "completed", "failed", "dead_letter")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium (never a downloaded build), closed after the test."""
    executable = shutil.which("chromium")
    if executable is None:
        missing("chromium is not installed (make system-deps installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def stats(stack: Stack, token: str) -> dict[str, Any]:
    reply = requests.get(f"{stack.url}/stats", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def sign_in(page: Any, stack: Stack, token: str) -> None:
    page.goto(f"{stack.url}/dashboard")
    page.fill("#token", token)
    page.click("#login-button")
    page.wait_for_selector("#board", state="visible")


def console_error(message: Any, problems: list[str]) -> None:
    url = message.location.get("url", "")
    if message.type == "error" and "/dead-letter-queue" not in url:  # a 404 there means "not built yet"
        problems.append(f"console: {message.text} ({url})")


def wait_for_polls(page: Any, count: int) -> None:
    # A function, not an expression: the page's CSP forbids eval, which an expression predicate would need.
    page.wait_for_function(f"() => Number(document.body.dataset.polls) >= {count}", timeout=30_000)


def test_the_dashboard_shows_a_users_counts_as_stats_does_and_the_failed_call_with_its_error(
    stack: Stack, user: str, browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import expect

    # The app stays up while the page is read: a stopped app stops its runners, and the functions panel
    # shows the warm ones.
    running = basic.app.run()
    running.__enter__()
    request.addfinalizer(lambda: running.__exit__(None, None, None))
    assert [basic.square.remote(x) for x in (1, 2, 3)] == [1, 4, 9]
    failing = basic.raise_value_error.spawn("the dashboard shows this error")
    with pytest.raises(ValueError):
        failing.get()
    expected = wait_for(
        lambda: (s := stats(stack, user))["calls"]["completed"] == 3 and s["calls"]["failed"] == 1 and s,
        30,
        "the four calls to be recorded",
    )

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: console_error(message, problems))

    page.goto(f"{stack.url}/dashboard")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#board")).to_be_hidden()
    sign_in(page, stack, user)
    assert page.evaluate("sessionStorage.getItem('minimodal.token')") == user
    wait_for_polls(page, 3)  # a few points on the charts

    for status in SHOWN:
        expect(page.locator(f"#count-{status}")).to_have_text(str(expected["calls"][status]))
    expect(page.locator("#count-functions")).to_have_text(str(expected["functions"]))
    expect(page.locator("#count-function_calls")).to_have_text(str(expected["function_calls"]))
    expect(page.locator("#count-workers")).to_have_text(str(stats(stack, user)["workers"]["total"]))
    expect(page.locator("#whoami")).to_contain_text(expected["user"])
    [row] = expected["users"]
    expect(page.locator("#users tbody tr")).to_have_count(1)
    expect(page.locator("#users tbody tr td").first).to_have_text(row["name"])

    failure = page.locator("#failures tbody tr", has_text=failing.object_id)
    expect(failure).to_have_count(1)
    expect(failure.locator("td.error")).to_contain_text("the dashboard shows this error")
    expect(failure).to_contain_text("raise_value_error")
    expect(page.locator("#workers tbody tr").first).to_contain_text("process")
    expect(page.locator("#queues")).to_contain_text("mm.cpu")
    expect(page.locator("#functions tbody tr", has_text="square")).to_have_count(1)  # its runner stays warm
    expect(page.locator("#dlq")).to_contain_text("Dead-letter queue")
    assert page.evaluate("Chart.getChart('chart-status').data.labels.length") >= 3

    failure.locator("a", has_text="logs").click()
    expect(page.locator("#logs-panel")).to_be_visible()
    expect(page.locator("#logs-call")).to_have_text(failing.object_id)
    expect(page.locator("#logs-text")).not_to_have_text("loading...")

    page.screenshot(path=str(tmp_path / "dashboard-user.png"), full_page=True)
    shutil.copy(tmp_path / "dashboard-user.png", "/tmp/dashboard.png")
    assert problems == []


def test_an_admin_sees_every_user_on_the_dashboard_and_signing_out_forgets_the_token(
    stack: Stack, user: str, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with basic.app.run():
        basic.square.remote(5)
    name = stats(stack, user)["user"]

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    sign_in(page, stack, stack.admin_token)
    wait_for_polls(page, 2)
    expect(page.locator("#whoami")).to_contain_text("admin: everyone")
    expect(page.locator("#users tbody")).to_contain_text(name)
    expect(page.locator("#users tbody")).to_contain_text("admin")
    page.screenshot(path=str(tmp_path / "dashboard-admin.png"), full_page=True)
    shutil.copy(tmp_path / "dashboard-admin.png", "/tmp/dashboard-admin.png")

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('minimodal.token')") is None
    page.reload()
    expect(page.locator("#board")).to_be_hidden()


def test_the_dashboard_refuses_a_wrong_token(stack: Stack, browser: Any) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(f"{stack.url}/dashboard")
    page.fill("#token", "mm_wrong")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_have_text("That token is not valid.")
    expect(page.locator("#board")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('minimodal.token')") is None


def test_the_dashboard_page_and_its_files_come_from_the_api_with_no_outside_origin(stack: Stack) -> None:
    page = requests.get(f"{stack.url}/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http://" not in page.text.replace(stack.url, "") and "https://" not in page.text
    for name in ("dashboard.js", "dashboard.css", "chart.umd.min.js"):
        reply = requests.get(f"{stack.url}/dashboard/static/{name}", timeout=10)
        assert reply.status_code == 200 and reply.content, name
    chart = requests.get(f"{stack.url}/dashboard/static/chart.umd.min.js", timeout=10).text
    assert "Chart.js v4.6.1" in chart[:200] and "MIT" in chart[:200]


@pytest.mark.docker
def test_the_dashboard_lists_sandboxes_with_their_state_and_age(
    docker_stack: Stack, docker_user: str, browser: Any
) -> None:
    import re

    from playwright.sync_api import expect

    import minimodal

    running = minimodal.Sandbox.create("sleep", "300", timeout=120)
    ended = minimodal.Sandbox.create("sh", "-c", "exit 3", timeout=120)
    ended.wait()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("console", lambda message: console_error(message, problems))
        sign_in(page, docker_stack, docker_user)
        wait_for_polls(page, 2)
        rows = page.locator("#sandboxes tbody tr")
        expect(rows.filter(has_text=running.object_id)).to_contain_text("running")
        expect(rows.filter(has_text=running.object_id)).to_contain_text("sleep 300")
        expect(rows.filter(has_text=ended.object_id)).to_contain_text("finished (3)")
        age = rows.filter(has_text=running.object_id).locator("td").nth(2).inner_text()
        assert re.fullmatch(r"\d+[smhd]", age), age
        assert problems == []
    finally:
        running.terminate()
