"""Click through the app in a real headless Chromium, as a person would, on tiny-random.

One app process serves the whole module; the tests run in pipeline order on one run, each leaving a screenshot in
test-artifacts/.
"""
from __future__ import annotations

import pytest

from tests.browser_helpers import AppServer, CHROMIUM, CHROMIUM_ARGS, choose_run, open_tab, pick_option, set_number, \
    shot, wait_for_text

pytestmark = pytest.mark.browser
RUN = "browser-e2e"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("browser") / "runs"
    runs.mkdir()
    app = AppServer(runs)
    yield app
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server.url)
    yield pg
    context.close()


def test_sample_tab_runs_a_job_and_shows_responses(page, server):
    choose_run(page, RUN)
    open_tab(page, "Sample")
    pick_option(page, "Model", "tiny-random")
    set_number(page, "Instructions (N)", 3)
    set_number(page, "Responses each (K)", 3)
    set_number(page, "Max new tokens", 12)
    page.get_by_role("button", name="Sample", exact=True).click()
    wait_for_text(page, "Sampling finished.")
    wait_for_text(page, "9 responses to 3 instructions")
    page.get_by_label("Instruction", exact=True).click()
    page.get_by_role("option").first.click()
    wait_for_text(page, "#2 ·")
    shot(page, "01-sample")


def test_the_run_survives_a_reload(page, server):
    page.reload()
    wait_for_text(page, "9 responses to 3 instructions", timeout_s=30)
    assert page.get_by_label("Run", exact=True).input_value() == RUN


def test_bad_input_shows_a_message_not_a_crash(page, server):
    open_tab(page, "Sample")
    page.get_by_label("My file").check()
    page.get_by_role("button", name="Sample", exact=True).click()
    wait_for_text(page, "Upload an instruction file first", timeout_s=30)
    shot(page, "02-sample-error")
    page.get_by_label("Bundled set (offline)").check()


def test_phone_width_layout_has_no_horizontal_scroll(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = context.new_page()
    pg.goto(server.url)
    pg.get_by_role("tab", name="Sample", exact=True).wait_for()
    overflow = pg.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    shot(pg, "00-phone")
    context.close()
    assert overflow <= 2
