"""Click through the app in a real headless Chromium, as a person would, on tiny-random.

One app process serves the whole module; the tests run in pipeline order on one run, each leaving a screenshot in
test-artifacts/.
"""
from __future__ import annotations

import re

import pytest

from tests.browser_helpers import AppServer, CHROMIUM, CHROMIUM_ARGS, choose_run, click, field, open_tab, panel, \
    pick_option, set_number, shot, wait_for_text, wait_for_toast
from tests.fakeprovider import FakeProvider, json_verdict

pytestmark = pytest.mark.browser
RUN = "browser-e2e"
PROVIDER_KEY = "sk-browser-test-key-0123456789abcdef0123"


@pytest.fixture(scope="module")
def provider():
    """The local chat-completions server standing in for the judge's provider; judges by length, consistently."""
    with FakeProvider(key=PROVIDER_KEY) as fp:
        fp.answer = prefer_longer
        yield fp


@pytest.fixture(scope="module")
def server(tmp_path_factory, provider):
    runs = tmp_path_factory.mktemp("browser") / "runs"
    runs.mkdir()
    # the owner's key and the owner's URL for it: the key goes there only (lab.judge_backends.resolve_key)
    app = AppServer(runs, env={"OPENAI_API_KEY": PROVIDER_KEY, "OPENAI_BASE_URL": provider.url + "/v1"})
    yield app
    app.close()


def prefer_longer(req: dict) -> str:
    """Verdict for the longer response, wherever it is shown, with a reasoning the page must show."""
    text = req["messages"][-1]["content"]
    a, b = (re.search(rf"\[Response {x}\](.*?)\[End of Response {x}\]", text, re.S).group(1) for x in "AB")
    return json_verdict("A" if len(a) >= len(b) else "B", "REASONING-SHOWN: the longer answer covers more")


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


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "page" in request.fixturenames:
        shot(request.getfixturevalue("page"), f"FAILED-{request.node.name}")


def test_sample_tab_runs_a_job_and_shows_responses(page, server):
    choose_run(page, RUN)
    open_tab(page, "Sample")
    pick_option(page, "Model", "tiny-random")
    set_number(page, "Instructions (N)", 3)
    set_number(page, "Responses each (K)", 3)
    set_number(page, "Max new tokens", 12)
    click(page, "Sample")
    wait_for_text(page, "Sampling finished.")
    wait_for_text(page, "9 responses to 3 instructions")
    field(page, "Instruction").click()
    page.get_by_role("option").first.click()
    wait_for_text(page, "#2 ·")
    shot(page, "01-sample")


def test_the_run_survives_a_reload(page, server):
    page.reload()
    wait_for_text(page, "9 responses to 3 instructions", timeout_s=30)
    assert page.get_by_label("Run", exact=True).input_value() == RUN


def test_bad_input_shows_a_message_not_a_crash(page, server):
    open_tab(page, "Sample")
    panel(page).get_by_label("My file").check()
    click(page, "Sample")
    wait_for_toast(page, "Upload an instruction file first")
    shot(page, "02-sample-error")
    panel(page).get_by_label("Bundled set (offline)").check()


def test_phone_width_layout_has_no_horizontal_scroll(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = context.new_page()
    pg.goto(server.url)
    pg.get_by_role("tab", name="Sample", exact=True).wait_for()
    overflow = pg.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    shot(pg, "00-phone")
    context.close()
    assert overflow <= 2


def test_judge_tab_shows_the_cost_first_then_reasoning_for_every_pair(page, provider):
    open_tab(page, "Judge")
    panel(page).get_by_label("OpenAI-compatible endpoint").check()
    field(page, "Base URL").fill(provider.url + "/v1")
    field(page, "Model").fill("judge-model")
    panel(page).get_by_text("Rate limit and local judge").click()
    set_number(page, "Requests per minute", 0)
    wait_for_text(page, re.compile(r"\*?\*?12\*?\*? calls|12 calls"), timeout_s=30)  # 2(K-1) x 3 instructions, before any call
    assert provider.calls == 0
    click(page, "Judge")
    wait_for_text(page, "Judging finished.")
    assert provider.calls >= 12
    field(page, "Instruction").click()
    page.get_by_role("option").first.click()
    panel(page).locator("summary").first.click()  # each pair folds out to the judge's reasoning in both orders
    wait_for_text(page, "REASONING-SHOWN", timeout_s=30)
    shot(page, "03-judge")


def test_pairrm_tab_ranks_with_a_tiny_pairrm_and_builds_pairs(page):
    open_tab(page, "PairRM")
    pick_option(page, "Ranker", "tiny-random")
    click(page, "Rank")
    wait_for_text(page, re.compile("[Rr]anking finished"))
    click(page, "Build pairs")
    wait_for_text(page, re.compile(r"3 pairs"), timeout_s=60)
    shot(page, "04-pairrm")


def test_spotcheck_override_survives_a_reload(page):
    open_tab(page, "Spot-check")
    click(page, "Load pairs")
    click(page, "2 is better")
    wait_for_text(page, re.compile("[Ss]aved|overrule|override"), timeout_s=30)
    shot(page, "05-spotcheck")
    page.reload()
    open_tab(page, "Spot-check")
    click(page, "Load pairs")
    wait_for_text(page, re.compile("1 (human )?check|1 override|overruled|You said"), timeout_s=30)


def test_train_tab_plots_the_loss_while_it_trains(page):
    open_tab(page, "Train")
    pick_option(page, "Pairs", "pairrm")
    field(page, "Adapter name").fill("dpo-pairrm")
    set_number(page, "Max steps", 4)
    click(page, "Train")
    wait_for_text(page, "Training dpo-pairrm finished.", timeout_s=240)
    assert page.locator(".js-plotly-plot, canvas, svg.main-svg, .vega-embed").count() > 0
    shot(page, "06-train")


def test_compare_tab_shows_the_grid_and_saves_notes(page):
    open_tab(page, "Compare")
    panel(page).get_by_label("dpo-pairrm").wait_for(timeout=30_000)  # trained in the previous tab, listed on opening
    set_number(page, "Instructions (0 = all)", 2)
    set_number(page, "Max new tokens", 8)
    panel(page).get_by_text("Scores and duplicates").click()
    field(page, "PairRM").fill("tiny-random")
    click(page, "Compare")
    wait_for_text(page, "Comparing finished.", timeout_s=240)
    wait_for_text(page, "dpo-pairrm", timeout_s=30)
    panel(page).get_by_label("Your overall notes on the comparison").fill("My own reading: no change at this size.")
    click(page, "Save overall notes")
    page.wait_for_timeout(1500)
    page.reload()
    open_tab(page, "Compare")
    notes = field(page, "Your overall notes on the comparison")
    for _ in range(60):  # the saved notes come back from the run once the tab has loaded it
        if notes.input_value().startswith("My own reading"):
            break
        page.wait_for_timeout(500)
    assert notes.input_value() == "My own reading: no change at this size."
    shot(page, "07-compare")


def test_iterate_tab_runs_two_self_rewarding_rounds(page):
    open_tab(page, "Iterate")
    for label, value in [("Rounds", 2), ("Answers per instruction (N)", 2), ("Scores per answer (R)", 1),
                         ("Instructions (0 = all of the run's)", 2), ("Max new tokens", 8),
                         ("Held-out instructions per round", 1)]:
        set_number(page, label, value)
    page.get_by_text("Training each round").click()
    set_number(page, "Max steps", 1)
    click(page, "Iterate")
    wait_for_text(page, "Iterating (2 rounds) finished.", timeout_s=400)
    shot(page, "08-iterate")


def test_share_tab_dry_run_stages_the_repos(page):
    open_tab(page, "Share")
    field(page, "Namespace").fill("someone")
    click(page, "Dry run (stage only)")
    wait_for_text(page, re.compile(r"Dry run: \d+ repos staged, nothing uploaded"), timeout_s=120)
    shot(page, "09-share")
