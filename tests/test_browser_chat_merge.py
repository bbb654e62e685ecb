"""Click the Chat tab and the Share tab's merge button in a real headless Chromium, on a run holding an adapter on
tiny-random (written through the lab's own record formats, as tests/test_hub.py does)."""
from __future__ import annotations

import os
import re

import pytest

from tests.browser_helpers import AppServer, CHROMIUM, CHROMIUM_ARGS, choose_run, click, field, open_tab, panel, \
    pick_option, shot, wait_for_text

pytestmark = pytest.mark.browser
RUN = "t"  # the name tests/test_hub.py's run builder gives its repos


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lab.store import Run
    from tests.test_hub import build_run
    from tests.test_merge import random_adapter

    runs = tmp_path_factory.mktemp("browser-chat") / "runs"
    before = os.environ.get("LAB_RUNS_DIR")
    os.environ["LAB_RUNS_DIR"] = str(runs)  # the run is built where the app will look for it
    try:
        run = build_run(Run.open(RUN))
        random_adapter(run)
    finally:
        os.environ.pop("LAB_RUNS_DIR") if before is None else os.environ.update(LAB_RUNS_DIR=before)
    app = AppServer(runs)
    yield app, runs
    app.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        pg.set_default_timeout(60_000)
        pg.goto(server[0].url)
        choose_run(pg, RUN)
        yield pg
        browser.close()


def test_the_chat_tab_streams_the_base_and_an_adapter_side_by_side(page):
    open_tab(page, "Chat")
    pick_option(page, "Side by side with", "adapter dpo-judge")
    wait_for_text(page, "adapter dpo-judge")  # the right pane shows, titled by its model, before the message goes
    page.wait_for_timeout(1000)  # a run's pane lists still landing (a loaded machine) would reset the pick: look again
    assert field(page, "Side by side with").input_value() == "adapter dpo-judge"
    field(page, "Message").fill("Name a colour.")
    click(page, "Send")
    # one answer per pane, each with text (an empty reply is said in words): model loading and decoding take a
    # while on a loaded machine, so the wait is for the finished text, not for a first render
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"bot\"]')]"
                           ".filter(b => b.innerText.trim() && !b.innerText.includes('loading the model')).length >= 2",
                           timeout=180_000)
    assert panel(page).locator("[data-testid='user']").count() == 2  # the message went to both panes
    assert field(page, "Message").input_value() == ""
    shot(page, "20-chat")


def test_the_share_tab_merges_an_adapter_and_offers_its_command(page, server):
    _, runs = server
    open_tab(page, "Share")
    panel(page).get_by_text("Merge an adapter into its base model").click()
    pick_option(page, "Adapter to merge", "dpo-judge")
    click(page, "Merge into the base")
    wait_for_text(page, "Merging dpo-judge finished.", timeout_s=180)
    assert (runs / RUN / "merged" / "dpo-judge" / "model.safetensors").exists()
    panel(page).get_by_text("Redo this job").click()
    wait_for_text(page, re.compile(r"python -m lab merge --run t --adapter dpo-judge"), timeout_s=30)
    click(page, "Dry run (stage only)")
    wait_for_text(page, "t-dpo-judge-merged", timeout_s=120)  # listed as a staged repo, with its kind
    wait_for_text(page, re.compile(r"^merged"), timeout_s=10)
    assert (runs / RUN / "hub" / "t-dpo-judge-merged" / "model.safetensors").exists()
    shot(page, "21-share-merge")
