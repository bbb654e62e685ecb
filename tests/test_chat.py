"""The chat playground's core (lab.chat): a streamed reply is greedy generation token for token, multi-turn and with
an adapter on, two panes side by side on one loaded base; the CLI chats one message or stdin's lines."""
from __future__ import annotations

import io
import json
import sys
from contextlib import nullcontext

import pytest

from lab import models
from lab.adapters import adapters_on
from lab.chat import ChatConfig, chat_stream, conversation, plain_messages, prompt_ids, stream_replies
from lab.cli import main
from lab.errors import LabError
from lab.engine_lab import generate_batch
from lab.generation import Decoding, generate
from tests.test_merge import merged_run, random_adapter  # noqa: F401  (merged_run: a fixture)

GREEDY = dict(model="tiny-random", temperature=0.0, top_p=1.0, max_new_tokens=24)


def streamed(run, cfg, panes, histories, message) -> list[list[str]]:
    return list(chat_stream(run, cfg, panes, histories, message))


def greedy_reference(cm, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy decoding of the same ids, stopped at the first end-of-turn token."""
    import torch

    with torch.no_grad():
        out = cm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n, do_sample=False, eos_token_id=cm.eos_ids,
                                pad_token_id=cm.tokenizer.pad_token_id)[0, len(ids):].tolist()
    return out[:next((i for i, t in enumerate(out) if t in cm.eos_ids), len(out))]


def test_a_streamed_reply_is_greedy_generation_token_for_token(tiny):
    messages = conversation("", [], "Name a colour.")
    ids = prompt_ids(tiny, messages, 24)
    steps = [[list(t) for t in s] for s in stream_replies(tiny, lambda name: nullcontext(tiny), ["base"],
                                                          [messages], Decoding(0.0, 1.0, 24, 0))]
    assert [s[0] for s in steps] == [steps[-1][0][:n] for n in range(1, len(steps) + 1)]  # one token per update
    assert steps[-1][0] == greedy_reference(tiny, ids, 24)
    want = generate(tiny, ["Name a colour."], 1, Decoding(0.0, 1.0, 24, 0))[0][0]
    texts = streamed(None, ChatConfig(**GREEDY), ["base"], [[]], "Name a colour.")
    assert texts[-1] == [want.text] and len(texts) == want.completion_tokens == len(steps)


def test_a_multi_turn_reply_answers_the_whole_conversation(tiny):
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi!"}]},  # Gradio's form of a message
               {"role": "assistant", "content": "Hello. How can I help?"}]
    cfg = ChatConfig(**GREEDY, system="Answer in one word.")
    reply = streamed(None, cfg, ["base"], [history], "Name a colour.")[-1][0]
    messages = conversation(cfg.system, history, "Name a colour.")
    assert messages[0] == {"role": "system", "content": "Answer in one word."} and len(messages) == 4
    assert messages[1] == {"role": "user", "content": "Hi!"}
    want = generate_batch(tiny, [prompt_ids(tiny, messages, 24)], [1], Decoding(0.0, 1.0, 24, 0), None)[0]
    assert reply == want.text and want.completion_tokens > 0
    shown = tiny.render(messages)
    assert "Hello. How can I help?" in shown and shown.index("Hi!") < shown.index("Name a colour.")  # every turn


def test_two_panes_side_by_side_are_the_base_and_the_adapter_each_greedy(merged_run):  # noqa: F811
    steps = streamed(merged_run, ChatConfig(**GREEDY), ["base", "dpo-judge"], [[], []], "Name a colour.")
    base, tuned = steps[-1]
    cm = models.load("tiny-random")
    dec = Decoding(0.0, 1.0, 24, 0)
    with adapters_on(cm, {"dpo-judge": merged_run.adapter_dir("dpo-judge")}) as select:
        with select("dpo-judge") as m:
            want_tuned = generate(m, ["Name a colour."], 1, dec)[0][0].text
    assert base == generate(cm, ["Name a colour."], 1, dec)[0][0].text
    assert tuned == want_tuned and tuned != base  # the adapter was on for its pane only
    assert not any("lora" in n for n, _ in cm.model.named_modules())  # the cached base is plain again


def test_sampling_is_seeded_and_bad_requests_say_what_to_do(merged_run, tiny):  # noqa: F811
    cfg = ChatConfig(model="tiny-random", temperature=1.0, max_new_tokens=12, seed=5)
    assert streamed(None, cfg, ["base"], [[]], "Hi")[-1] == streamed(None, cfg, ["base"], [[]], "Hi")[-1]
    with pytest.raises(LabError, match="Type a message first"):
        streamed(None, cfg, ["base"], [[]], "  ")
    with pytest.raises(LabError, match="No adapter 'nope' in run t"):
        streamed(merged_run, cfg, ["nope"], [[]], "Hi")
    with pytest.raises(LabError, match="adapters belong to a run"):
        streamed(None, cfg, ["dpo-judge"], [[]], "Hi")
    with pytest.raises(LabError, match="exceeds this model's context of 2048 tokens: clear the chat"):
        streamed(None, ChatConfig(model="tiny-random", max_new_tokens=8000), ["base"], [[]], "Hi")
    assert plain_messages([{"role": "tool", "content": "x"}, {"role": "assistant", "content": []}]) == [
        {"role": "assistant", "content": ""}]  # an empty reply is still a turn


def test_the_cli_answers_one_message_or_every_line_of_stdin(run, tiny, capsys, monkeypatch):
    run.path.mkdir(parents=True)
    argv = ["chat", "--run", run.name, "--model", "tiny-random", "--temperature", "0", "--max-new-tokens", "16"]
    assert main([*argv, "--message", "Name a colour."]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    want = generate(tiny, ["Name a colour."], 1, Decoding(0.0, 0.95, 16, 0))[0][0].text
    assert summary["reply"] == want and summary["turns"] == 1 and want in out.err
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n\nName a colour.\n"))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["turns"] == 2
    assert sorted(p.name for p in run.path.iterdir()) == []  # a chat writes nothing into the run


@pytest.mark.slow
def test_on_the_bundled_model_a_streamed_reply_is_greedy_generation():
    cm = models.load("bundled")
    cfg = ChatConfig(model="bundled", temperature=0.0, max_new_tokens=40)
    reply = streamed(None, cfg, ["base"], [[]], "Give me one tip for better sleep.")[-1][0]
    want = generate(cm, ["Give me one tip for better sleep."], 1, Decoding(0.0, 0.95, 40, 0))[0][0].text
    assert reply == want and len(reply.split()) > 3
