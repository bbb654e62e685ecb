"""Chat tab: talk to the run's base model or one of its adapters, or two side by side (base vs an adapter, two
adapters), multi-turn, each reply streamed token by token (lab.chat). API endpoint: /chat.

The reply is generated in the web server's process (a job could not stream into the page): one chat at a time, on
the one cached model, with the adapters switched on it. The chat writes nothing into the run; on a hosted app the
visitor gate (lab.ui.visitors) lets a visitor chat with their own runs and the shared ones, and the owner's caps
(new tokens, model size) apply (lab.hosting.check_chat).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
from gradio.components.chatbot import ChatbotDataMessages
from pydantic import model_validator

from lab import hosting
from lab.adapters import BASE
from lab.chat import MAX_MESSAGES, ChatConfig, chat_stream, clean_history, measured_history
from lab.errors import LabError
from lab.store import Run
from lab.ui import forms
from lab.ui.common import labels_view
from lab.ui.views import View, chain, internal
from lab.ui.wording import say

NO_PANE = ""  # the right pane switched off (BASE is the plain model; an adapter may not be called "base")
EMPTY_REPLY = "*(no text: the model ended its reply at once)*"
FORM = ["model", "system", "temperature", "top_p", "max_new_tokens", "seed"]  # the order `chat` reads them in


@dataclass
class ChatTab:
    left: gr.Dropdown
    right: gr.Dropdown
    fields: dict  # ChatConfig field name -> input
    chat_left: gr.Chatbot
    chat_right: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    clear: gr.Button
    views: list = field(default_factory=list)  # lab.ui.views.View: the panes' choices, re-read on every change
    labels: gr.Markdown | None = None  # noise labels of the run's model (lab.noise)


def _settings_inputs() -> dict:
    inp = lambda names, **kw: forms.inputs(ChatConfig, names, **kw)  # noqa: E731
    with gr.Accordion("Model and decoding", open=False):
        with gr.Row():
            made = inp(["model", "system"], model=dict(placeholder="the run's model (bundled without one)"),
                       system=dict(placeholder="none: the chat template's own"))
        with gr.Row():
            made |= inp(["temperature", "top_p", "max_new_tokens", "seed"],
                        temperature=dict(kind="Slider", minimum=0, maximum=2, step=0.05),
                        top_p=dict(kind="Slider", minimum=0.05, maximum=1, step=0.01),
                        max_new_tokens=dict(value=128, minimum=1))
    return {name: made[name] for name in FORM}


def build(ctx) -> ChatTab:
    gr.Markdown("Talk to the base model or an adapter of the run, or to two side by side: the same message goes to "
                "both, each answers its own conversation, streamed. Decoding as in Compare (temperature 0 = greedy). "
                "A 135M model (bundled) is a weak writer: it is here to try things, not to judge them.")
    with gr.Row():
        # custom values: the choices are the run's adapters, which the page fills in (an API client names them);
        # lab.chat refuses a name that is not an adapter of the run
        left = gr.Dropdown([("base model", BASE)], value=BASE, label="Talk to", info="the base model or an adapter",
                           allow_custom_value=True)
        right = gr.Dropdown([("(one pane only)", NO_PANE), ("base model", BASE)], value=NO_PANE,
                            label="Side by side with", info="a second model answering the same messages",
                            allow_custom_value=True)
    fields = _settings_inputs()
    labels, noise = labels_view("chat")
    with gr.Row():
        chat_left = gr.Chatbot(label="base model", height=380)
        chat_right = gr.Chatbot(label="second pane", height=380, visible=False)
    with gr.Row():
        message = gr.Textbox(label="Message", placeholder="Type a message and press Enter", scale=5, lines=1)
        send = gr.Button("Send", variant="primary", scale=1)
        clear = gr.Button("Clear", scale=0, min_width=80)
    tab = ChatTab(left, right, fields, chat_left, chat_right, message, send, clear, labels=labels)
    tab.views = [View(pane_choices, [left, right], inputs=[left, right]), noise]
    _wire(tab, ctx)
    return tab


def _wire(tab: ChatTab, ctx) -> None:
    inputs = [ctx.run_name, tab.left, tab.right, tab.message, tab.chat_left, tab.chat_right, *tab.fields.values()]
    outputs = [tab.chat_left, tab.chat_right, tab.message]
    for box in (tab.chat_left, tab.chat_right):
        box.data_model = MeasuredMessages  # Gradio validates an input with its component's data_model first
    tab.send.click(chat, inputs=inputs, outputs=outputs, api_name="chat", concurrency_id="chat")
    tab.message.submit(chat, inputs=inputs, outputs=outputs, concurrency_id="chat", **internal())
    tab.clear.click(lambda: ([], [], ""), outputs=outputs, **internal())
    tab.left.change(lambda name: gr.update(label=_title(name)), tab.left, tab.chat_left, **internal())
    tab.right.change(lambda name: gr.update(label=_title(name), visible=name != NO_PANE), tab.right, tab.chat_right,
                     **internal())
    chain(ctx.run_name.change, ctx.run_name, tab.views)


class MeasuredMessages(ChatbotDataMessages):
    """A chat history as a page or an API client sent it, cleaned before Gradio checks it message by message (a
    malformed 40,000-message history logged three lines per message): entries that are not messages are left out
    with one log line (lab.chat.clean_history), and one entry past MAX_MESSAGES is kept at most, for the handler
    to refuse with its message (lab.chat.measured_history; an error raised here would reach the page as Gradio's
    generic one)."""

    @model_validator(mode="before")
    @classmethod
    def cleaned(cls, value):
        raw = value[:MAX_MESSAGES + 1] if isinstance(value, (list, tuple)) else value
        return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in clean_history(raw)]


def _title(pane: str | None) -> str:
    return "base model" if not pane or pane == BASE else f"adapter {pane}"


def pane_choices(run_name: str | None, left: str | None = None, right: str | None = None):
    """[left, right]: the base model and the run's finished adapters (the right pane may be off); what is picked
    stays picked while it is still there. A value is sent only to replace one that is gone: `left` and `right` are
    what the page held when this look started, and a pick made while it ran (a loaded machine: seconds) must not be
    put back to that."""
    run = _run(run_name)
    adapters = [*run.adapters(), *run.round_adapters()] if run else []  # with the self-rewarding rounds'
    both = [("base model", BASE), *((f"adapter {a}", a) for a in adapters)]
    keep = {BASE, *adapters}
    return (gr.update(choices=both, **({} if left in keep else {"value": BASE})),
            gr.update(choices=[("(one pane only)", NO_PANE), *both], **({} if right in keep | {NO_PANE}
                                                                          else {"value": NO_PANE})))


def _run(run_name: str | None) -> Run | None:
    """The chosen run if it exists (a chat with the base model needs none)."""
    try:
        return Run.open(str(run_name).strip(), create=False) if run_name and str(run_name).strip() else None
    except LabError:
        return None


def chat(run_name, left, right, message, history_left, history_right, *values):
    """Generator: [left chat, right chat, message box] as the replies stream in. The histories come back from the
    page (or an API client) as Gradio's messages; each pane answers its own."""
    if not (message or "").strip():
        raise gr.Error("Type a message first.")
    run = _run(run_name)
    panes = [left or BASE] + ([right] if right and right != NO_PANE else [])
    try:
        histories = [measured_history(h, message) for h in (history_left, history_right)][:len(panes)]
        cfg = ChatConfig.from_form(dict(zip(FORM, values))).validate()
        hosting.check_chat(run, cfg, tuple(panes))
    except LabError as e:
        raise gr.Error(hosting.public_text(say(e))) from e
    # until a pane's first words come (a model loading takes seconds), its bubble says so instead of staying empty
    shown = [h + [{"role": "user", "content": message}, {"role": "assistant", "content": LOADING}] for h in histories]
    yield _views(shown, history_right, "")
    replies: list[str] = [""] * len(shown)
    try:
        for replies in chat_stream(run, cfg, panes, histories, message):
            for view, reply in zip(shown, replies):
                view[-1]["content"] = reply or view[-1]["content"]
            yield _views(shown, history_right, "")
    except LabError as e:
        raise gr.Error(hosting.public_text(say(e))) from e
    for view, reply in zip(shown, replies):  # the end: each pane's whole reply; one that ended at once says so
        view[-1]["content"] = reply or EMPTY_REPLY
    yield _views(shown, history_right, "")


LOADING = "*loading the model…*"  # plain text: an hourglass emoji drew as an empty box in the page's font


def _views(shown: list[list[dict]], right_before, message: str):
    """The outputs: the right pane keeps what it showed when it is off."""
    right = shown[1] if len(shown) > 1 else (right_before or [])
    return [[dict(m) for m in shown[0]], [dict(m) for m in right], message]  # each step a snapshot of its own

