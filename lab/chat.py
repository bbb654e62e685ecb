"""Chat playground: talk to the base model or an adapter of a run (or to several side by side), multi-turn, the reply
streamed token by token, with the same decoding settings as sampling and comparing.

The app's Chat tab (lab.ui.chat, API endpoint /chat) and `python -m lab chat` both call `chat_stream`. Every pane
answers on ONE loaded base model: its adapters are attached once (lab.adapters.adapters_on) and switched on for
each step of their pane, so two panes cost one model in memory. A pane is BASE ("base", the plain model) or an
adapter name of the run. The conversation is rendered by the model's own chat template (lab.models); the decode
loop is lab.engine_lab's (stream_completion), so at temperature 0 a streamed reply is `generate`'s answer token for
token. A chat writes nothing into the run.

A conversation is a list of {"role": "user" | "assistant" | "system", "content": str}; Gradio's chatbot gives
content as a list of parts ({"type": "text", "text": ...}), which `plain_messages` turns back into text.
"""
from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lab import limits, models
from lab.adapters import BASE, adapters_on, check_same_base, read_state, resolve_adapters
from lab.config import Settings, opt
from lab.errors import LabError
from lab.engine_lab import make_generator, stream_completion
from lab.generation import Decoding
from lab.progress import Progress
from lab.sample import check_decoding
from lab.store import Run

MODEL_LOCK = threading.Lock()  # one chat at a time on the process's one cached model: adapters switch on it


@dataclass
class ChatConfig(Settings):
    adapter: str = opt("", "an adapter of the run to talk to (empty: the base model)", label="Adapter")
    model: str = opt("", "base model spec (empty: the adapter's base, else the run's model, else 'bundled')",
                     label="Base model")
    message: str = opt("", "answer this one message and exit (empty: chat on stdin, one line per turn)")
    system: str = opt("", "a system prompt (empty: the chat template's own)", label="System prompt")
    temperature: float = opt(0.7, "sampling temperature (0 = greedy)", label="Temperature")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)",
                       label="Top-p")
    max_new_tokens: int = opt(256, "longest reply, in tokens", label="Max new tokens")
    seed: int = opt(0, "seed of the sampling (each reply draws from it afresh)", label="Seed")
    device: str = opt("auto", "cpu, cuda or auto (GPU if there is one)")
    dtype: str = opt("auto", "float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)")

    def validate(self) -> "ChatConfig":
        check_decoding(self.temperature, self.top_p, self.max_new_tokens, 1)
        return self

    def decoding(self) -> Decoding:
        return Decoding(self.temperature, self.top_p, self.max_new_tokens, self.seed)


# ---- conversations --------------------------------------------------------------------------------------------------
def text_of(content) -> str:
    """A message's text: a string as it is; Gradio's list of parts joined (files and components left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    parts = content if isinstance(content, (list, tuple)) else []
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)


def plain_messages(history) -> list[dict]:
    """A chat history (ours or Gradio's) as [{"role", "content": str}]; unknown roles dropped. An empty reply stays a
    turn (dropping it would put two user messages in a row)."""
    return [{"role": m["role"], "content": text_of(m.get("content"))} for m in history or []
            if isinstance(m, dict) and m.get("role") in ("user", "assistant", "system")]


MAX_MESSAGES = 400  # messages a chat history may hold (200 turns; a bare API client sent 40,000)
log = logging.getLogger(__name__)


def measured_history(history, message: str) -> list[dict]:
    """A history that came from a page or an API client, as plain messages (clean_history), measured before any
    work on it: past MAX_MESSAGES messages, or past the owner's text caps (lab.limits.check_chat_text), LabError."""
    if isinstance(history, (list, tuple)) and len(history) > MAX_MESSAGES:
        raise LabError(f"The chat history holds more than {MAX_MESSAGES} messages, the most a chat keeps: clear the "
                       "chat and start again.")
    plain = clean_history(history)
    limits.check_chat_text(message or "", [m["content"] for m in plain])
    return plain


def clean_history(history) -> list[dict]:
    """plain_messages of `history`; entries that are not messages are left out with one log line for all of them
    (never one per entry: a malformed 40,000-message history logged 120,000 lines)."""
    raw = history if isinstance(history, (list, tuple)) else []
    plain = plain_messages(raw)
    if len(plain) < len(raw) or not isinstance(history, (list, tuple, type(None))):
        log.warning("chat: left out %d of %d history entries that are not {role, content} messages",
                    len(raw) - len(plain) or 1, len(raw) or 1)
    return plain


def conversation(system: str, history, message: str) -> list[dict]:
    """What the model is shown: the system prompt (if any), the earlier turns, the new user message."""
    head = [{"role": "system", "content": system.strip()}] if system.strip() else []
    turns = [m for m in plain_messages(history) if m["role"] != "system"]
    return head + turns + [{"role": "user", "content": message}]


# ---- models and panes -----------------------------------------------------------------------------------------------
def pane_adapters(run: Run | None, panes: list[str]) -> dict[str, Path]:
    """{adapter name: folder} for the panes that are not BASE (run adapters only)."""
    names = [p for p in dict.fromkeys(panes) if p and p != BASE]
    if not names:
        return {}
    if run is None:
        raise LabError("Choose a run first (top of the page): adapters belong to a run.")
    return resolve_adapters(run, ",".join(names))


def chat_model(run: Run | None, given: str, adapters: dict[str, Path]) -> str:
    """--model, else the base an adapter was trained on, else the model the run sampled with, else 'bundled'."""
    trained = next(((read_state(f) or {}).get("base_model") for f in adapters.values()), None)
    sampled = (run.stage_settings("sample") or {}).get("model") if run else None
    return (given or "").strip() or trained or sampled or "bundled"


@contextmanager
def loaded(spec: str, adapters: dict[str, Path], device: str, dtype: str) -> Iterator[tuple]:
    """(chat model, select) with the adapters attached, held by this chat alone until the block ends."""
    with MODEL_LOCK:
        cm = models.load(spec, device, dtype)
        check_same_base(adapters, spec, cm.path)
        with adapters_on(cm, adapters) as select:
            yield cm, select


def prompt_ids(cm, messages: list[dict], max_new_tokens: int) -> list[int]:
    """The conversation rendered by the model's template, as ids; refused when it and the reply exceed the context."""
    ids = cm.tokenizer(cm.render(messages), add_special_tokens=False)["input_ids"]
    limit = getattr(cm.model.config, "max_position_embeddings", None)
    if limit and len(ids) + max_new_tokens > limit:
        raise LabError(f"The conversation ({len(ids)} tokens) plus --max-new-tokens {max_new_tokens} exceeds this "
                       f"model's context of {limit} tokens: clear the chat or lower the max new tokens.")
    return ids


def stream_replies(cm, select, panes: list[str], conversations: list[list[dict]], dec: Decoding
                   ) -> Iterator[list[list[int]]]:
    """Every pane's reply so far (token ids), after each new token. Panes take turns one token at a time, each drawn
    with its own adapter switched on (or none, for BASE) and its own RNG seeded by dec.seed."""
    ids = [prompt_ids(cm, conv, dec.max_new_tokens) for conv in conversations]  # all checked before any token
    streams = [stream_completion(cm, p, dec, make_generator(cm, dec.seed, f"chat:{i}")) for i, p in enumerate(ids)]
    tokens: list[list[int]] = [[] for _ in panes]
    live = [True] * len(panes)
    while any(live):
        grew = False
        for i, stream in enumerate(streams):
            if not live[i]:
                continue
            with select(None if panes[i] == BASE else panes[i]):
                try:
                    tokens[i].append(next(stream))
                    grew = True
                except StopIteration:
                    live[i] = False
        if grew:
            yield tokens


def chat_stream(run: Run | None, cfg: ChatConfig, panes: list[str], histories: list, message: str
                ) -> Iterator[list[str]]:
    """Answer `message` in each pane (BASE or an adapter of `run`), after that pane's own history: yields the replies
    so far, one text per pane, as tokens arrive. cfg: the decoding, the system prompt and the base model."""
    cfg.validate()
    if not (message or "").strip():
        raise LabError("Type a message first.")
    adapters = pane_adapters(run, panes)
    spec = chat_model(run, cfg.model, adapters)
    convs = [conversation(cfg.system, h, message) for h in histories]
    with loaded(spec, adapters, cfg.device, cfg.dtype) as (cm, select):
        for tokens in stream_replies(cm, select, panes, convs, cfg.decoding()):
            yield [cm.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]  # as generate does


# ---- the command line -----------------------------------------------------------------------------------------------
def run(run: Run, cfg: ChatConfig, progress: Progress | None = None) -> dict:
    """`python -m lab chat`: --message answers one message; without it, each line typed on stdin is a turn (until
    end of input). Replies stream to stderr as they are generated; the summary (with the last reply) goes to stdout."""
    cfg.validate()
    pane = cfg.adapter.strip() or BASE
    turns = [cfg.message] if cfg.message.strip() else _typed_lines()
    history: list[dict] = []
    for message in turns:
        reply = _print_stream(chat_stream(run, cfg, [pane], [history], message))
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
    return {"run": run.name, "model": chat_model(run, cfg.model, pane_adapters(run, [pane])), "adapter":
            None if pane == BASE else pane, "turns": len(history) // 2,
            "reply": history[-1]["content"] if history else ""}


def _print_stream(replies: Iterator[list[str]]) -> str:
    """Write each new piece of a one-pane reply to stderr as it arrives; -> the whole reply."""
    shown = reply = ""
    for (reply,) in replies:
        if reply.startswith(shown):  # a half-decoded character may change; wait until the text only grows
            sys.stderr.write(reply[len(shown):])
            sys.stderr.flush()
            shown = reply
    sys.stderr.write(reply[len(shown):] + "\n")
    return reply


def _typed_lines() -> Iterator[str]:
    """Non-empty lines of stdin, with a prompt on stderr when a person types them."""
    while True:
        if sys.stdin.isatty():
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()
