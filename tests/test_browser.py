"""Click through the app in a real headless Chromium, as a person would, on tiny-random.

One app process serves the whole module; the tests run in pipeline order on one run, each leaving a screenshot in
test-artifacts/. Every toast any page shows is collected, and the last test checks that none speaks in command-line
flags. Phone-width checks (390x844) open their own page on the same app.
"""
from __future__ import annotations

import re
import time

import pytest

from tests.browser_helpers import AppServer, CHROMIUM, CHROMIUM_ARGS, box, boxes, choose_run, click, collect_toasts, \
    field, open_tab, panel, pick_option, progress_of, sample_form, set_number, shot, wait_for_text, wait_for_toast
from tests.fakeprovider import FakeProvider, json_verdict

pytestmark = pytest.mark.browser
RUN = "browser-e2e"
SLOW_RUN = "browser-progress"
PROVIDER_KEY = "sk-browser-test-key-0123456789abcdef0123"
TABS = ["Sample", "Judge", "PairRM", "Spot-check", "Train", "Compare", "Iterate", "Chat", "Share"]
CLI_WORDS = re.compile(r"--[a-z]|python -m lab|`|same command")


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
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.toasts = collect_toasts(ctx)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context, server):
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server.url)
    yield pg


@pytest.fixture
def phone(browser, server):
    """A page at phone width (390x844) on the same app."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    ctx.toasts = collect_toasts(ctx)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server.url)
    pg.get_by_role("tab", name="Sample", exact=True).wait_for()
    yield pg
    assert not [t for t in ctx.toasts if CLI_WORDS.search(t)], ctx.toasts
    ctx.close()


def test_a_mistake_speaks_the_pages_words_not_the_command_lines(page):
    choose_run(page, "browser-empty")
    open_tab(page, "Judge")
    click(page, "Judge")
    wait_for_toast(page, "start it in the Sample tab")  # no such run yet: the way out is a tab, not a command
    toast = page.locator(".toast-body, [data-testid='toast-body']").first.inner_text()
    assert not CLI_WORDS.search(toast), toast
    shot(page, "00-toast")


def test_no_tab_explains_itself_in_command_line_flags(page):
    """The help under every input is the settings field's help in the page's words: "ignored when "Max steps" > 0",
    not "--max-steps"; a command the page can run is its tab."""
    for tab in TABS:
        open_tab(page, tab)
        if tab not in ("Chat", "Spot-check"):  # no job on this run: no empty bar and no Stop button
            assert not panel(page).get_by_role("button", name="Stop", exact=True).is_visible(), tab
        text = panel(page).inner_text()
        assert not re.search(r"--[a-z]|python -m lab", text), (tab, re.findall(r".{40}(?:--[a-z]|python -m).{40}",
                                                                                text))


def test_sampling_progress_moves_and_the_form_survives_a_reload(page):
    """Progress inside the batches (tokens), then a reload mid-job: the form shows the running job's settings."""
    choose_run(page, SLOW_RUN)
    open_tab(page, "Sample")
    sample_form(page, 2, 2, 900)
    panel(page).get_by_text("Decoding").click()
    set_number(page, "Batch size", 1)
    click(page, "Sample")
    fills, labels = sample_bar(page, until=lambda fs: len({f for f in fs if 0 < f < 1}) >= 3, timeout_s=120)
    moving = sorted({f for f in fills if 0 < f < 1})
    assert len(moving) >= 3 and fills == sorted(fills), (fills, labels)  # it moves, and only forwards
    assert any("tokens" in x for x in labels), labels
    shot(page, "01-sample-progress")
    page.reload()
    open_tab(page, "Sample")
    for label, value in [("Instructions (N)", "2"), ("Responses each (K)", "2"), ("Max new tokens", "900")]:
        wait_for_value(page, label, value)
    assert field(page, "Model").input_value().startswith("tiny-random")
    wait_for_text(page, "Sampling is running", timeout_s=30)  # re-attached to the job
    shot(page, "02-sample-restored-after-reload")
    click(page, "Stop")
    wait_for_text(page, re.compile("Sampling stopped"), timeout_s=90)


def sample_bar(page, until, timeout_s: float) -> tuple[list[float], list[str]]:
    """Read the bar every 0.3 s while the job runs, until until(fills) holds."""
    fills, labels, deadline = [], [], time.time() + timeout_s
    while time.time() < deadline and not until(fills):
        fill, label = progress_of(page)
        fills.append(fill)
        labels.append(label)
        page.wait_for_timeout(300)
    return fills, labels


def wait_for_value(page, label: str, value: str, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while (got := field(page, label).input_value()) != value:
        assert time.time() < deadline, f"{label}: {got!r}, not {value!r}"
        page.wait_for_timeout(300)


def test_sample_tab_runs_a_job_and_shows_responses(page, server):
    choose_run(page, RUN)
    open_tab(page, "Sample")
    sample_form(page, 3, 3, 12)
    panel(page).get_by_text("Decoding").click()
    set_number(page, "Batch size", 64)
    click(page, "Sample")
    wait_for_text(page, "Sampling finished.")
    wait_for_text(page, "9 responses to 3 instructions")  # at the job's end, without a reload
    wait_for_text(page, "Made with model tiny-random")
    field(page, "Instruction").click()
    page.get_by_role("option").first.click()
    wait_for_text(page, "#2 ·")
    shot(page, "03-sample")


def test_the_run_survives_a_reload(page, server):
    page.reload()
    wait_for_text(page, "9 responses to 3 instructions", timeout_s=30)
    assert page.get_by_label("Run", exact=True).input_value() == RUN
    wait_for_value(page, "Max new tokens", "12")  # the form is the run's again (it lands after the page: wait)


def test_bad_input_shows_a_message_not_a_crash(page, server):
    open_tab(page, "Sample")
    mine = panel(page).get_by_label("My file")
    mine.check()
    assert mine.is_checked()
    click(page, "Sample")
    wait_for_toast(page, "Upload an instruction file first")
    shot(page, "04-sample-error")
    panel(page).get_by_label("Bundled set (offline)").check()


def test_an_uploaded_instruction_file_is_sampled(page, server, tmp_path):
    """The Sample tab's file box takes a real upload (lab.ui.common.refuse_url_files refuses URLs only)."""
    src = tmp_path / "my-instructions.txt"
    src.write_text("Name a colour.\nName a fruit.\n", encoding="utf-8")
    choose_run(page, "browser-upload")
    open_tab(page, "Sample")
    panel(page).get_by_label("My file").check()
    panel(page).locator("input[type=file]").set_input_files(str(src))
    wait_for_text(page, "my-instructions.txt")
    sample_form(page, 2, 2, 8)
    click(page, "Sample")
    wait_for_text(page, "Sampling finished.")
    wait_for_text(page, "4 responses to 2 instructions")
    shot(page, "04b-sample-upload")
    panel(page).get_by_label("Bundled set (offline)").check()
    choose_run(page, RUN)  # the pipeline's run again, for the tabs after this one
    wait_for_text(page, "9 responses to 3 instructions", timeout_s=30)


def test_a_bad_run_name_left_in_the_box_writes_no_traceback_while_it_polls(page, server):
    choose_run(page, "not a run!")
    wait_for_toast(page, "use 1-64 letters")  # refused once, as a toast (Gradio logs that refusal)
    page.wait_for_timeout(1000)
    before = server.log_text().count("Traceback")
    page.wait_for_timeout(4000)  # a few poll seconds with the bad name left in the box
    assert server.log_text().count("Traceback") == before
    choose_run(page, RUN)
    wait_for_text(page, "9 responses to 3 instructions", timeout_s=30)


def test_phone_width_every_tab_is_in_reach(phone):
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 2
    assert phone.locator(".overflow-menu:visible").count() == 0  # no "⋯" menu hiding tabs
    for title in TABS:
        tab = phone.get_by_role("tab", name=title, exact=True)
        b = box(tab)
        assert b and b["x"] >= 0 and b["x"] + b["width"] <= 391, (title, b)
        tab.click()
        phone.locator('[role="tabpanel"]:visible').first.wait_for()
        phone.wait_for_timeout(300)
        wide = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 2, (title, wide)  # no tab's form or table pushes the page sideways
    open_tab(phone, "Sample")
    model = box(field(phone, "Model"))
    assert model["width"] >= 300, model  # the model's name is not cut to a few letters
    shot(phone, "05-phone")


def test_judge_tab_shows_the_cost_first_then_reasoning_for_every_pair(page, provider):
    open_tab(page, "Judge")
    assert not field(page, "API judge key (optional)").is_visible()  # the local judge needs no key
    panel(page).get_by_label("OpenAI-compatible endpoint").check()
    field(page, "API judge key (optional)").wait_for()
    field(page, "Base URL").fill(provider.url + "/v1")
    field(page, "Model").fill("judge-model")
    panel(page).get_by_text("Rate limit and local judge").click()
    set_number(page, "Requests per minute", 0)
    set_number(page, "Concurrent requests", 2)  # 12 calls of 1 s: a few seconds to watch it run
    wait_for_text(page, re.compile(r"\*?\*?12\*?\*? calls|12 calls"), timeout_s=30)  # 2(K-1) x 3, before any call
    assert provider.calls == 0
    provider.latency_s = 1.0  # long enough to watch it run
    click(page, "Judge")
    labels = bar_labels(page, "judging", seconds=4, shot_as="06a-judge-running")
    assert len(set(labels)) >= 2 and all(re.search(r"judging \d+(\.\d+)?/12", x) for x in labels), labels
    wait_for_text(page, "Judging finished.")
    provider.latency_s = 0.0
    assert provider.calls >= 12
    wait_for_text(page, "Made with judge openai")
    field(page, "Instruction").click()
    page.get_by_role("option").first.click()
    panel(page).locator("summary").first.click()  # each pair folds out to the judge's reasoning in both orders
    wait_for_text(page, "REASONING-SHOWN", timeout_s=30)
    assert "(4 for K=3)" in panel(page).inner_text()  # the plan's calls worded for this run's K
    wait_for_text(page, "Build pairs", timeout_s=10)  # where the verdicts go next
    shot(page, "06-judge")


def test_spotcheck_shows_the_judged_pairs_without_loading_and_keeps_an_override(page):
    open_tab(page, "Spot-check")
    wait_for_text(page, re.compile(r"Pair \*?\*?1\*?\*? of"), timeout_s=30)  # the judge ran: no "Load pairs" needed
    click(page, "2 is better")
    wait_for_text(page, re.compile("[Ss]aved|overrule|override"), timeout_s=30)
    shot(page, "07-spotcheck")
    page.reload()
    open_tab(page, "Spot-check")
    click(page, "Load pairs")
    wait_for_text(page, re.compile("1 (human )?check|1 override|overruled|You said"), timeout_s=30)


def test_phone_width_spotcheck_stacks_the_two_answers(phone):
    """At 390 px the two responses are one above the other, each near the page's width (side by side they were two
    unreadable slivers), and nothing pushes the page sideways."""
    choose_run(phone, RUN)
    open_tab(phone, "Spot-check")
    wait_for_text(phone, re.compile(r"Pair \*?\*?1\*?\*? of"), timeout_s=30)
    one, two = settled_boxes(panel(phone).locator(".lab-response"), 2)
    assert abs(one["x"] - two["x"]) < 2 and two["y"] >= one["y"] + one["height"] - 1, (one, two)
    assert min(one["width"], two["width"]) >= 300 and one["x"] + one["width"] <= 390, (one, two)
    for pre in panel(phone).locator(".lab-response pre").all():
        assert pre.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), "an answer runs off to the side"
    for name in ("1 is better", "2 is better", "Tie", "Skip"):
        b = box(panel(phone).get_by_role("button", name=name, exact=True))
        assert b["x"] >= 0 and b["x"] + b["width"] <= 391, (name, b)
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 2, overflow
    shot(phone, "07b-phone-spotcheck")


def test_pairrm_tab_ranks_with_a_tiny_pairrm_and_builds_pairs(page):
    open_tab(page, "PairRM")
    pick_option(page, "Ranker", "tiny-random")
    click(page, "Rank")
    wait_for_text(page, re.compile("[Rr]anking finished"))
    wait_for_text(page, "Made with ranker tiny-random")
    headers = panel(page).locator(".lab-table th")
    assert headers.count() == 7
    line = panel(page).locator(".lab-table td").first.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
    for i in range(headers.count()):  # no header broken letter by letter: one line per word at most
        h = headers.nth(i)
        words = max(len(h.inner_text().split()), 1)
        text_height = h.evaluate("e => { const r = document.createRange(); r.selectNodeContents(e); "
                                 "return r.getBoundingClientRect().height; }")
        assert text_height <= line * words + 1, (h.inner_text(), text_height, line)
    click(page, "Build pairs")
    wait_for_text(page, re.compile(r"3 pairs"), timeout_s=60)
    shot(page, "08-pairrm")


def test_train_tab_plots_the_loss_while_it_trains(page):
    open_tab(page, "Train")
    pick_option(page, "Pairs", "pairrm")
    field(page, "Adapter name").fill("dpo-pairrm")
    set_number(page, "Max steps", 4)
    click(page, "Train")
    wait_for_text(page, "Training dpo-pairrm finished.", timeout_s=240)
    wait_for_text(page, "Made with method dpo", timeout_s=30)
    # the curves are drawn, with their legend: a plot first sent an empty frame drew neither when the steps came
    panel(page).locator(".vega-embed .mark-line path").first.wait_for(timeout=30_000)
    assert panel(page).locator(".vega-embed").get_by_text("loss").count() > 0
    shot(page, "09-train")


def test_compare_tab_shows_scores_and_a_side_by_side_grid_without_reload(page):
    open_tab(page, "Compare")
    panel(page).get_by_label("dpo-pairrm").wait_for(timeout=30_000)  # trained in the previous tab, listed on opening
    set_number(page, "Instructions (0 = all)", 4)
    set_number(page, "Max new tokens", 150)  # with batches of one (below): seconds of decoding to watch the bar move
    wait_for_text(page, "No scorer chosen")  # said before it runs
    panel(page).get_by_role("button", name=re.compile("^Scores and duplicates")).click()
    # the fold's fields mount as it opens: text typed while they mount can be reset by their first render (seen on a
    # loaded machine: the box stayed empty), so type once the box is there and keeps what it was given
    pairrm = field(page, "PairRM")
    pairrm.wait_for()
    for _ in range(5):
        pairrm.fill("tiny-random")
        page.wait_for_timeout(500)
        if pairrm.input_value() == "tiny-random":
            break
    assert pairrm.input_value() == "tiny-random"
    pairrm.press("Tab")
    panel(page).get_by_text("No scorer chosen").wait_for(state="hidden", timeout=15_000)  # gone once one is set
    set_number(page, "Batch size", 1)  # tiny-random decodes 8 answers of 40 tokens in under a second, in one batch
    click(page, "Compare")
    # the shot and the labels from when the bar counts answers (4 instructions x 2 models), not while it loads
    labels = bar_labels(page, "comparing", seconds=4, shot_as="10a-compare-running")
    assert len(set(labels)) >= 2, labels  # it moves within seconds: per decode step inside a batch
    assert all(re.search(r"comparing \d+(\.\d+)?/8 .*(left|so far)", x) for x in labels), labels
    wait_for_text(page, "Comparing finished.", timeout_s=240)
    scores = panel(page).locator(".lab-table")
    scores.get_by_text("dpo-pairrm").wait_for(timeout=30_000)  # the scores, without a reload
    assert re.search(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\] \(n=\d\)", scores.inner_text())  # PairRM's win rate
    assert_grid_side_by_side(page)
    shot(page, "10-compare")
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
    wait_for_value(page, "Max new tokens", "150")  # the last comparison's settings, after the reload
    panel(page).get_by_role("button", name=re.compile("^Scores and duplicates")).click()  # folded after a reload
    wait_for_value(page, "PairRM", "tiny-random")
    wait_for_value(page, "Batch size", "1")
    wait_for_text(page, "Comparing finished.", timeout_s=30)  # the job panel shows the last comparison's end
    fill, label = progress_of(page)
    assert fill == 1.0 and re.search(r"\d/\d", label), (fill, label)  # its last phase's count, done: not blank
    assert not panel(page).get_by_role("button", name="Stop", exact=True).is_visible()  # nothing left to stop


def test_after_a_reload_train_shows_the_last_trained_adapter_and_its_plots(page):
    """The run's latest job is the comparison, not a training: the tab still shows the adapter trained last."""
    open_tab(page, "Train")  # the page was reloaded by the test before, with no adapter picked
    wait_for_value(page, "Adapter shown", "dpo-pairrm")
    panel(page).locator(".vega-embed .mark-line path").first.wait_for(timeout=30_000)
    wait_for_text(page, "Made with method dpo", timeout_s=30)


def test_an_adapter_trained_while_compare_is_shown_appears_there_without_switching_tabs(page):
    """Start a training, go to Compare while it runs: its adapter joins the list when it ends, with no reload or
    tab switch (a user waited on Compare and the list stayed stale)."""
    open_tab(page, "Train")
    pick_option(page, "Pairs", "pairrm")
    field(page, "Adapter name").fill("dpo-late")
    set_number(page, "Max steps", 40)  # still running when Compare opens: the child alone takes seconds to start
    click(page, "Train")
    wait_for_text(page, re.compile("Training dpo-late is running"), timeout_s=60)
    open_tab(page, "Compare")
    late = panel(page).get_by_label("dpo-late")
    panel(page).get_by_label("dpo-pairrm").wait_for(timeout=30_000)
    assert late.count() == 0, "listed when Compare opened: training ended first, the test saw no update"
    late.wait_for(timeout=300_000)
    shot(page, "10b-compare-after-training")


def assert_grid_side_by_side(page) -> None:
    """At 1280 px: base and the adapter in two columns of equal width, on one line, inside the page, text wrapped."""
    item = panel(page).locator(".lab-grid-item").first
    item.wait_for(timeout=30_000)
    cells = item.locator(".lab-cell")
    assert cells.count() == 2
    base, adapter = boxes(item, ".lab-cell")
    assert abs(base["y"] - adapter["y"]) < 2 and abs(base["width"] - adapter["width"]) < 2, (base, adapter)
    assert adapter["x"] > base["x"] + base["width"] - 2 and adapter["x"] + adapter["width"] <= 1280
    for i in range(2):
        text = cells.nth(i).locator(".lab-cell-text")
        assert text.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), "a cell's text runs off to the side"
    assert "hit max tokens" in item.inner_text() and "PairRM:" in item.inner_text()


def settled_boxes(cells, n: int, timeout_s: float = 15) -> list[dict]:
    """The first n cells' boxes, read together (one script: no re-render between them) once two readings agree:
    the tab's views re-render the grid as the page settles after opening."""
    script = f"els => els.slice(0, {n}).map(e => {{ const r = e.getBoundingClientRect(); " \
             "return {x: r.x, y: r.y + window.scrollY, width: r.width, height: r.height}; })"
    last, deadline = None, time.time() + timeout_s
    while True:
        now = cells.evaluate_all(script)
        if now == last or time.time() > deadline:
            return now
        last = now
        cells.page.wait_for_timeout(500)


def test_phone_width_the_grid_stacks_the_models(phone):
    choose_run(phone, RUN)
    open_tab(phone, "Compare")
    item = panel(phone).locator(".lab-grid-item").first
    item.wait_for(timeout=30_000)
    base, adapter = settled_boxes(item.locator(".lab-cell"), 2)
    assert abs(base["x"] - adapter["x"]) < 2 and adapter["y"] >= base["y"] + base["height"] - 1, (base, adapter)
    assert base["x"] >= 0 and base["x"] + base["width"] <= 390
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 2
    item.scroll_into_view_if_needed()
    shot(phone, "11-phone-compare")


def test_phone_width_the_train_plots_stack_whole(phone):
    """At 390 px the training curves sit one above the other, each inside the screen (side by side they had cut
    titles and legends)."""
    choose_run(phone, RUN)
    open_tab(phone, "Train")  # the adapter trained last is shown, with its curves
    plots = panel(phone).locator(".vega-embed")
    plots.nth(1).locator(".mark-line path").first.wait_for(timeout=30_000)
    first, second = settled_boxes(plots, 2)
    assert second["y"] >= first["y"] + first["height"] - 1, (first, second)  # stacked, not side by side
    for b in (first, second):
        assert b["x"] >= 0 and b["x"] + b["width"] <= 390 and b["width"] >= 250, b
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 2
    plots.first.scroll_into_view_if_needed()
    shot(phone, "09b-phone-train")


def test_iterate_tab_plans_then_draws_round_1_at_once_and_lists_its_adapters_in_chat(page):
    open_tab(page, "Iterate")
    assert not field(page, "API judge key (optional)").is_visible()  # the model judges itself: no key
    for label, value in [("Rounds", 2), ("Answers per instruction (N)", 2), ("Scores per answer (R)", 1),
                         ("Instructions (0 = all of the run's)", 2), ("Max new tokens", 8),
                         ("Held-out instructions per round", 1), ("Judge tokens (longest judgment)", 8)]:
        set_number(page, label, value)
    page.get_by_text("Training each round").click()
    set_number(page, "Max steps", 1)
    # the plan before anything runs: 2 rounds x 2 instructions x N=2, at this run's measured pace
    wait_for_text(page, re.compile(r"2 rounds to run on 2 instructions: 8 answers and 8 self-scores"), timeout_s=30)
    assert "tokens/s" in panel(page).inner_text()
    click(page, "Iterate")
    labels = bar_labels(page, "round 1 ·", seconds=6)
    assert len(set(labels)) >= 2 and all(x.startswith("round 1 · ") for x in labels), labels  # moves, names the round
    rows = panel(page).locator(".lab-table tbody tr")
    rows.first.wait_for(timeout=300_000)  # round 1 done: its row, and its plots drawn now, not after round 2
    wins = panel(page).locator(".lab-plots img")
    wins.first.wait_for(timeout=30_000)
    assert panel(page).locator(".lab-plots .vega-embed .mark-rect path").count() > 0  # the self-score bars
    assert "One round so far" in panel(page).inner_text()  # the caption, under the plots
    shot(page, "12a-iterate-round-1")
    wait_for_text(page, "Iterating (2 rounds) finished.", timeout_s=400)
    assert "2 rounds done 2/2" in progress_of(page)[1]  # ends on its last phase done
    rows.nth(1).wait_for(timeout=30_000)
    assert rows.count() == 2 and "round-2" in rows.nth(1).inner_text()
    assert "too few for an interval" in rows.nth(1).inner_text()  # 1 held-out instruction: no [1.00, 1.00]
    page.wait_for_timeout(1500)  # the plots redrawn with round 2, no reload
    shot(page, "12-iterate-round-2")
    open_tab(page, "Chat")  # the rounds' adapters are there to talk to
    field(page, "Talk to").click()
    page.get_by_role("option", name="adapter round-2").wait_for(timeout=30_000)
    page.keyboard.press("Escape")


def bar_labels(page, phase: str, seconds: float, shot_as: str = "") -> list[str]:
    """The job bar's label every 0.25 s for `seconds` from when it first shows `phase`; shot_as: a screenshot the
    first time the label shows `phase` with work done ("comparing 2.4/8", not 0/8) while the job runs (the test fails
    if it never does: a shot of "starting…" or of 0/8 shows nothing of the progress)."""
    deadline = time.time() + 120
    while phase not in progress_of(page)[1]:
        assert time.time() < deadline, progress_of(page)
        page.wait_for_timeout(200)
    labels, end = [], time.time() + seconds
    while time.time() < end:
        label = progress_of(page)[1]
        if phase in label:
            labels.append(label)
        counted = re.search(re.escape(phase) + r"\D*?(\d+(?:\.\d+)?)/\d", label)
        if shot_as and counted and float(counted[1]) > 0 and panel(page).get_by_text("is running").count() > 0:
            shot(page, shot_as)
            shot_as = ""
        page.wait_for_timeout(250)
    assert not shot_as, f"no running look with a count for {shot_as}: {labels}"
    return labels


# Every visible dropdown of a tab with a value: the width of its text (in the input's own font) and the room from
# the input's left padding to its arrow (the arrow sits over the input's right end, so the input's own scrollWidth
# cannot see text under it).
DROPDOWN_TEXT = """p => [...p.querySelectorAll('.wrap input[role="combobox"]')]
  .filter(e => e.getClientRects().length && e.value).map(e => {
    const s = getComputedStyle(e), ctx = document.createElement('canvas').getContext('2d');
    ctx.font = s.font;
    const r = e.getBoundingClientRect(), arrow = e.parentElement.querySelector('.icon-wrap');
    const end = arrow && arrow.getClientRects().length ? arrow.getBoundingClientRect().left
                                                       : r.right - parseFloat(s.paddingRight);
    return {label: e.getAttribute('aria-label'), value: e.value, text: ctx.measureText(e.value).width,
            room: end - r.left - parseFloat(s.paddingLeft)};
  })"""


def test_no_dropdown_text_is_cut_under_its_arrow_at_1280(page):
    """Every tab's visible dropdowns, whatever they hold at the end of the pipeline (a model, a ranker, a method, an
    instruction picked, an adapter shown...)."""
    seen, cut = [], []
    for tab in TABS:
        open_tab(page, tab)
        page.wait_for_timeout(300)  # the tab's views land after it opens
        for d in panel(page).evaluate(DROPDOWN_TEXT):
            seen.append((tab, d["label"]))
            if d["text"] > d["room"] + 1:
                cut.append((tab, d))
    assert not cut, cut
    assert {("Sample", "Model"), ("PairRM", "Ranker"), ("Train", "Method"), ("Chat", "Talk to")} <= set(seen), seen


def test_share_tab_dry_run_stages_the_repos_and_stays_short(page):
    open_tab(page, "Share")
    field(page, "Namespace").fill("someone")
    click(page, "Dry run (stage only)")
    wait_for_text(page, re.compile(r"Dry run: \d+ repos staged, nothing uploaded"), timeout_s=120)
    page.wait_for_timeout(1000)
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 3000, height  # the card previews are folded
    shot(page, "13-share")


def test_no_toast_spoke_in_command_line_flags(context):
    assert context.toasts, "the toasts were not collected"
    assert not [t for t in context.toasts if CLI_WORDS.search(t)], context.toasts
