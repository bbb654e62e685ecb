"""An idle page costs the server nothing: the tab on screen polls its job only while one is queued or running
(issue 23: the shown tab polled once a second with no job at all)."""
from __future__ import annotations

import pytest

from tests.browser_helpers import AppServer, CHROMIUM, CHROMIUM_ARGS, choose_run, click, open_tab, panel, \
    sample_form, wait_for_text

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    runs = tmp_path_factory.mktemp("idle") / "runs"
    runs.mkdir()
    app = AppServer(runs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(60_000)
        pg.calls = []  # every event the page sends to the server's queue
        pg.on("request", lambda r: pg.calls.append(r.post_data) if "/queue/join" in r.url else None)
        pg.goto(app.url)
        pg.get_by_role("tab", name="Sample", exact=True).wait_for()
        yield pg
        browser.close()
    app.close()


def calls_over(page, seconds: float) -> int:
    before = len(page.calls)
    page.wait_for_timeout(seconds * 1000)
    return len(page.calls) - before


def settles(page, timeout_s: float = 60) -> bool:
    """True once the page has sent nothing for 3 s (picking a run re-reads every tab's views: a few dozen events
    that take a while on a busy machine); False if it never stops within timeout_s."""
    for _ in range(int(timeout_s / 3)):
        if calls_over(page, 3) == 0:
            return True
    return False


def test_an_idle_page_sends_nothing_and_a_running_job_is_followed_to_its_end(page):
    choose_run(page, "idle")
    open_tab(page, "Sample")
    assert settles(page)
    assert calls_over(page, 5) == 0
    open_tab(page, "Train")  # another tab: one look, then quiet again
    assert settles(page, 15)
    open_tab(page, "Sample")
    sample_form(page, 2, 1, 600)  # seconds of decoding at batch size 1 (tiny-random), beyond the start-up
    panel(page).get_by_text("Decoding").click()
    panel(page).get_by_label("Batch size").first.fill("1")
    click(page, "Sample")
    page.wait_for_timeout(1000)
    assert calls_over(page, 3) >= 2  # the running job is polled
    wait_for_text(page, "Sampling finished.", timeout_s=240)
    assert settles(page, 15)  # and once it has ended, nothing
