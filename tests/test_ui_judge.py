"""The Judge tab: its handlers against a run and the local provider (the job runs for real), and the tab in the app."""
from __future__ import annotations

import json
import os
import re

import gradio as gr
import pytest

from lab import jobs
from lab.judge import DEFAULT_TEMPLATE
from lab.records.verdicts import TIE_BAND
from lab.ui import judge as tab
from tests.fakeprovider import FakeProvider
from tests.test_judge import KEY, add_samples, prefer_higher

SETTINGS = dict(backend="openai", model="m", base_url="", plan="knockout", rpm=0, concurrency=4, reasoning_tokens=8)


def test_the_cost_is_shown_before_anything_runs(run):
    assert "no samples yet" in tab.show_cost("t", **SETTINGS, prompt=DEFAULT_TEMPLATE)
    add_samples(run, n=50, k=5)
    text = tab.show_cost("t", **{**SETTINGS, "backend": "groq", "model": "", "rpm": 30}, prompt=DEFAULT_TEMPLATE)
    assert "**400** calls to make (400 in the plan, 0 already cached) for 50 instructions" in text
    assert "about **13.3 min** at the rate limit" in text and "llama-3.3-70b-versatile" in text
    full = tab.show_cost("t", **{**SETTINGS, "plan": "full", "backend": "local", "model": ""}, prompt=DEFAULT_TEMPLATE)
    assert "**1000** calls" in full and "no rate limit" in full
    assert "lacks {response_b}" in tab.show_cost("t", **SETTINGS, prompt="{instruction} {response_a}")


def test_key_notes_never_show_a_key(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    assert "is set" in tab.key_note("groq") and KEY not in tab.key_note("groq")
    assert "OPENAI_API_KEY` is not set" in tab.key_note("openai") and "weak" in tab.key_note("local")


def test_user_mistakes_become_messages(run):
    add_samples(run, n=1, k=3)
    with pytest.raises(gr.Error, match="OPENAI_API_KEY is not set"):
        tab.start_judging("t", **SETTINGS, prompt=DEFAULT_TEMPLATE)
    with pytest.raises(gr.Error, match="lacks"):
        tab.start_judging("t", **SETTINGS, prompt="no placeholders")
    with pytest.raises(gr.Error, match="Choose a run"):
        tab.start_judging("", **SETTINGS, prompt=DEFAULT_TEMPLATE)


def test_judging_as_a_job_then_figures_and_reasoning_per_order(run, monkeypatch):
    add_samples(run, n=2, k=3)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompt = DEFAULT_TEMPLATE + "\nBe brief."
    with FakeProvider(key=KEY, answer=prefer_higher) as fp:
        monkeypatch.setenv("OPENAI_BASE_URL", fp.url + "/v1")  # the owner's key goes to the owner's URL
        status = tab.start_judging("t", **{**SETTINGS, "base_url": fp.url + "/v1"}, prompt=prompt)
        assert "**8** calls to make" in status
        st = jobs.wait(run, timeout_s=120)
    assert st["state"] == "done", st.get("log_tail")
    assert fp.calls == 8 and KEY not in str(st)  # the key reached the job through its environment only
    assert tab.saved_prompt("t") == prompt  # the edited prompt is what ran, and what a reload shows
    figures, picker, shown = tab.refresh("t")
    assert "**2** of 2 instructions have a preference" in figures and "| 100% |" in figures
    assert "Made with judge openai · model m · call plan knockout · prompt " in figures and shown == ""
    assert "**Build pairs**" in figures and "**PairRM** tab" in figures  # where the verdicts go next
    assert [c[0] for c in tab.plan_choices("t")["choices"]] == [  # worded for this run's K=3, not K=5
        "Knockout: 2(K-1) calls per instruction (4 for K=3)",
        "Full: every pair in both orders, K(K-1) calls (6 for K=3)"]
    html = tab.show_pairs("t", picker["choices"][0][1])
    assert "#0 vs #1</b>: #1 preferred" in html and "#0 shown first" in html and "#1 shown first" in html
    assert "Q1Q is more thorough" in html and "#1 preferred (both orders agree)" in html  # the rule is shown


def test_position_calibration_and_its_tie_band_are_chosen_in_the_page(run, monkeypatch):
    add_samples(run, n=2, k=3)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def first_wins_scores_tell(req: dict) -> str:  # always "A"; the scores favour the higher quality mark QjQ
        body = req["messages"][-1]["content"].split("[Response A]", 1)[1]
        first, second = (int(m) for m in re.findall(r"Q(\d)Q", body)[:2])
        return json.dumps({"reasoning": "the first", "score_a": 5 + (first > second), "score_b": 5 + (second > first),
                           "verdict": "A"})
    local = {**SETTINGS, "backend": "local", "model": ""}
    assert "for API judges" in tab.show_cost("t", **local, prompt=DEFAULT_TEMPLATE, calibrate="scores")
    with FakeProvider(key=KEY, answer=first_wins_scores_tell) as fp:
        monkeypatch.setenv("OPENAI_BASE_URL", fp.url + "/v1")
        tab.start_judging("t", **{**SETTINGS, "base_url": fp.url + "/v1"}, prompt=DEFAULT_TEMPLATE,
                          calibrate="scores", tie_band=0.01)
        st = jobs.wait(run, timeout_s=120)
    assert st["state"] == "done" and fp.calls == 8, st.get("log_tail")
    assert {k: run.stage_settings("judge")[k] for k in ("calibrate", "tie_band")} == {"calibrate": "scores",
                                                                                    "tie_band": 0.01}
    figures = tab.refresh("t")[0]
    assert "**2** of 2 instructions have a preference" in figures and "4 decided by position calibration" in figures


def test_a_key_typed_in_the_page_reaches_only_that_job(run, runs_dir):
    """A visitor's own key: used by the job it starts, and found in no file of the run, the log or job.json."""
    add_samples(run, n=1, k=3)
    typed = "sk-typed-in-the-browser-0123456789abcdef"
    with FakeProvider(key=typed, answer=prefer_higher) as fp:
        tab.start_judging("t", **{**SETTINGS, "base_url": fp.url + "/v1"}, prompt=DEFAULT_TEMPLATE, api_key=typed)
        st = jobs.wait(run, timeout_s=120)
    assert st["state"] == "done" and fp.calls == 4, st.get("log_tail")
    for path in runs_dir.rglob("*"):
        assert not path.is_file() or typed not in path.read_text(errors="replace"), path
    assert "OPENAI_API_KEY" not in os.environ  # the app's own environment was not touched


def test_the_tab_is_in_the_app_and_answers_a_client(run):
    from gradio_client import Client

    from lab.ui import TABS, build_app, launch_kwargs

    assert TABS.index(("Judge", "lab.ui.judge")) == TABS.index(("Sample", "lab.ui.sample")) + 1
    add_samples(run, n=3, k=5)
    app = build_app()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
    try:
        client = Client(app.local_url, verbose=False)
        text = client.predict("t", "local", "", "", "full", 30, 8, 8, DEFAULT_TEMPLATE, "auto", TIE_BAND,
                              api_name="/show_cost")
    finally:
        app.close()
    assert "**60** calls to make" in text


def test_the_base_url_box_follows_the_backend_entry(monkeypatch):
    """The Base URL box is a capability of the backend's entry, never a list of names in the tab: every backend
    shows it exactly when its entry says so, and a new OpenAI-compatible entry gets it without touching the tab."""
    from dataclasses import replace

    from lab.judge_backends import BACKENDS
    for name, entry in BACKENDS.items():
        assert tab.shows_base_url(name) is entry.custom_url
        assert tab.backend_changed(name)[1]["visible"] is entry.custom_url
    assert tab.shows_base_url("openai") and not tab.shows_base_url("groq") and not tab.shows_base_url("local")
    monkeypatch.setitem(BACKENDS, "together", replace(BACKENDS["groq"], label="Together", custom_url=True))
    assert tab.shows_base_url("together")
    assert tab.config_from("openai", "m", "http://127.0.0.1:9/v1", "knockout", 30, 1, 0).base_url == \
        "http://127.0.0.1:9/v1"
    assert tab.config_from("groq", "m", "http://127.0.0.1:9/v1", "knockout", 30, 1, 0).base_url == ""
