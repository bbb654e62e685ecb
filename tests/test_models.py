import pytest

from lab import models
from lab.errors import LabError
from lab.instructions import load_instructions, prompt_id

# A Llama-3.2-style template: BOS from the template, a system header with today's date, <|eot_id|> ends a turn.
LLAMA32_LIKE_TEMPLATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: "
    "{{ date_string }}\n\n<|eot_id|>{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{%- endfor %}{%- if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}")


def llama32_like_folder(folder, pad: bool = True) -> str:
    """tiny-random saved in `folder` with a Llama-3.2-style tokenizer and template (several end-of-turn ids; the
    template prints today's date unless given date_string); pad=False drops the pad token, as Llama-3.2 has none."""
    from transformers import AutoModelForCausalLM

    tok = models.load_tokenizer("tiny-random")
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "additional_special_tokens":
                            ["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|end_of_text|>"]})
    if not pad:
        tok.pad_token = None
    tok.chat_template = LLAMA32_LIKE_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-random"))
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory):
    """A copy of the tiny model with a tokenizer that behaves like Llama-3.2's: no pad token, several end-of-turn ids."""
    return models.load(llama32_like_folder(tmp_path_factory.mktemp("llama-like"), pad=False))


def test_llama_style_chat_details(llama_like):
    tok = llama_like.tokenizer
    vocab = tok.get_vocab()
    assert {vocab["<|eot_id|>"], vocab["<|eom_id|>"], vocab["<|end_of_text|>"]} <= set(llama_like.eos_ids)
    assert tok.pad_token_id is not None and tok.pad_token_id not in llama_like.eos_ids
    text = llama_like.render([{"role": "user", "content": "hi"}])
    assert "Today Date: " + models.PINNED_DATE in text  # reproducible prompts whatever the day
    ids = llama_like.encode_prompt("hi")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one


def test_pad_token_never_equals_end_of_turn(tiny):
    tok = tiny.tokenizer
    assert tok.pad_token_id not in tiny.eos_ids
    assert tok.padding_side == "left"


def test_models_are_reused_within_a_process():
    assert models.load("tiny-random") is models.load("tiny-random")


@pytest.mark.parametrize("spec,message", [
    ("", "Unknown model"),
    ("not a model", "Unknown model"),
    ("meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-1B-Instruct"),
])
def test_unusable_specs_say_what_to_do(spec, message):
    with pytest.raises(LabError, match=message):
        models.load(spec)


def test_a_folder_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(LabError, match="config.json"):
        models.resolve(str(tmp_path))


def test_device_choice_is_overridable():
    assert models.pick_device("cpu", "auto")[0] == "cpu"
    assert str(models.pick_device("cpu", "bfloat16")[1]) == "torch.bfloat16"
    with pytest.raises(LabError, match="dtype"):
        models.pick_device("cpu", "int3")


def test_instruction_files_in_every_format(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "one"}\n\n{"prompt": "two", "id": "x2"}\n{"prompt": "one"}\n')
    (tmp_path / "a.csv").write_text('prompt,other\n"one, with a comma",1\ntwo,2\n')
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert [(i.id, i.prompt) for i in load_instructions(str(tmp_path / "a.jsonl"))] == \
        [(prompt_id("one"), "one"), ("x2", "two")]  # duplicate dropped, given ids kept
    assert [i.prompt for i in load_instructions(str(tmp_path / "a.csv"))] == ["one, with a comma", "two"]
    assert [i.prompt for i in load_instructions(str(tmp_path / "a.txt"), n=1)] == ["one"]


def test_bundled_sets_are_deterministic_and_disjoint():
    train = load_instructions("bundled")
    held = load_instructions("heldout")
    assert len(train) >= 60 and len(held) >= 10
    assert not {i.prompt for i in train} & {i.prompt for i in held}
    assert load_instructions("bundled", n=5) == train[:5]


def test_lima_offline_says_how_to_get_it():
    with pytest.raises(LabError, match="HF_TOKEN"):
        load_instructions("lima", n=5)


def test_every_chat_rendering_of_the_lab_goes_through_render_chat():
    """One set of template arguments everywhere (models.CHAT_TEMPLATE_KWARGS): in lab/ the only call of
    apply_chat_template is models.render_chat's (sampling, judges, engines, compare, chat, self-scoring and reward
    models use it; training hands the same arguments to TRL: tests/test_train.py)."""
    import ast
    from pathlib import Path

    calls = []
    for path in sorted((Path(models.__file__).parent).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "apply_chat_template":
                calls.append(path.name)
    assert calls == ["models.py"]
    source = Path(models.__file__).read_text(encoding="utf-8")
    assert "**CHAT_TEMPLATE_KWARGS)" in source.split("def render_chat", 1)[1].split("\ndef ", 1)[0]
