"""The Chat tab (lab.ui.chat): its handler streams both panes, the real app answers /chat through gradio_client
with the reply arriving in pieces, and on a hosted app the visitor gate covers the streaming handler."""
from __future__ import annotations

import pytest

from lab import models
from lab.adapters import adapters_on
from lab.chat import text_of
from lab.generation import Decoding, generate
from lab.ui.chat import EMPTY_REPLY
from tests.test_merge import merged_run  # noqa: F401  (a fixture: run t, adapter dpo-judge on tiny-random)

VALUES = ("", "", 0.0, 1.0, 16, 0)  # model (the run's), system, temperature, top_p, max new tokens, seed


def greedy(adapter_dir=None, prompt="Name a colour.") -> str:
    cm, dec = models.load("tiny-random"), Decoding(0.0, 1.0, 16, 0)
    with adapters_on(cm, {"a": adapter_dir} if adapter_dir else {}) as select, select("a" if adapter_dir else None) \
            as m:
        return generate(m, [prompt], 1, dec)[0][0].text


def test_the_handler_streams_both_panes_and_keeps_the_conversation(merged_run):  # noqa: F811
    import gradio as gr

    from lab.ui import chat as tab

    steps = list(tab.chat("t", "base", "dpo-judge", "Name a colour.", [], [], *VALUES))
    first, last = steps[0], steps[-1]
    assert first[0] == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": tab.LOADING}]
    assert first[2] == "" and len(steps) > 2  # the box is cleared at once, the replies arrive in pieces
    tuned = greedy(merged_run.adapter_dir("dpo-judge"))
    # tiny-random's greedy reply to this prompt may be empty: the pane then says so (EMPTY_REPLY)
    assert last[0][-1]["content"] == (greedy() or tab.EMPTY_REPLY) and last[1][-1]["content"] == tuned and tuned
    again = list(tab.chat("t", "dpo-judge", "", "And another?", last[0], last[1], *VALUES))[-1]
    assert len(again[0]) == 4 and again[1] == last[1]  # one pane now: the right one keeps what it showed
    left, right = tab.pane_choices("t")
    assert left["choices"] == [("base model", "base"), ("adapter dpo-judge", "dpo-judge")]
    assert right["value"] == "" and ("(one pane only)", "") in right["choices"]
    # a look that started while the page held valid picks sends no value: a pick made meanwhile is not put back
    left, right = tab.pane_choices("t", "dpo-judge", "")
    assert "value" not in left and "value" not in right
    assert tab.pane_choices("t", "gone", "gone")[1]["value"] == ""  # a pick that is gone is replaced
    with pytest.raises(gr.Error, match="Type a message first"):
        list(tab.chat("t", "base", "", " ", [], [], *VALUES))
    with pytest.raises(gr.Error, match="No adapter 'gone'"):
        list(tab.chat("t", "gone", "", "Hi", [], [], *VALUES))


def launched():
    from lab.ui import build_app, launch_kwargs

    app = build_app()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
    return app


def test_the_app_answers_chat_through_its_api_streamed(merged_run):  # noqa: F811
    from gradio_client import Client

    from lab.ui import TABS

    assert ("Chat", "lab.ui.chat") in TABS
    app = launched()
    try:
        client = Client(app.local_url, verbose=False)
        assert "/chat" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        job = client.submit("t", "base", "dpo-judge", "Name a colour.", [], [], *VALUES, api_name="/chat")
        left, right, box = job.result()
        streamed = job.outputs()
    finally:
        app.close()
    assert len(streamed) > 2 and box == ""  # the reply came in pieces
    tuned = greedy(merged_run.adapter_dir("dpo-judge"))
    assert text_of(left[-1]["content"]) == (greedy() or EMPTY_REPLY) and text_of(right[-1]["content"]) == tuned \
        and tuned


def test_on_a_hosted_app_the_chat_reaches_only_the_visitors_runs(runs_dir, monkeypatch):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from lab import hosting
    from lab.store import Run

    monkeypatch.setenv("LAB_HOSTED", "1")
    app = launched()
    try:
        alice, bob = (Client(app.local_url, verbose=False) for _ in "ab")
        alice_id = alice.predict(None, None, api_name="/arrive")[0]
        bob.predict(None, None, api_name="/arrive")
        assert hosting.claim("alices", hosting.Visitor.of(browser_id=alice_id))
        Run.open("alices").append("notes", [{"kept": True}])  # something in it, so the claim stays
        left = alice.predict("alices", "base", "", "Name a colour.", [], [], "tiny-random", *VALUES[1:],
                             api_name="/chat")[0]
        assert text_of(left[-1]["content"]) == (greedy() or EMPTY_REPLY)
        with pytest.raises(AppError, match="No such run 'alices' among yours"):
            bob.predict("alices", "base", "", "Hi", [], [], "tiny-random", *VALUES[1:], api_name="/chat")
        with pytest.raises(AppError, match="above this app's cap of 256"):
            alice.predict("alices", "base", "", "Hi", [], [], "tiny-random", "", 0.0, 1.0, 300, 0, api_name="/chat")
    finally:
        app.close()


def test_a_reply_that_ends_at_once_is_said_in_words_not_left_blank(monkeypatch):
    """A model may end its reply on its first token (tiny-random does at greedy for "Name a colour."); the pane then
    says so instead of showing an empty bubble. The model cannot be steered to do that on demand, so the stream
    (lab.chat.chat_stream, tested above on the real model) is replaced by one that ends one pane at once."""
    from lab.ui import chat as tab

    monkeypatch.setattr(tab, "chat_stream", lambda *a: iter([["", "Blue"]]))
    last = list(tab.chat(None, "base", "base", "Name a colour.", [], [], *VALUES))[-1]
    assert last[0][-1]["content"] == tab.EMPTY_REPLY and last[1][-1]["content"] == "Blue"
