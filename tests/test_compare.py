"""lab.compare: held-out duplicates, one base with switched adapters, the grid and its exports, scores, notes."""
import json

import pandas as pd
import pytest

from lab import compare, compare_scorers, models
from lab.compare import CompareConfig
from lab.errors import LabError
from lab.progress import Progress, Stopped
from lab.records import comparisons
from lab.records.rankings import preference
from lab.stats import lc_win_rate


def make_adapter(run, name: str, spec: str = "tiny-random", seed: int = 0, base_name: str | None = None):
    """A small LoRA adapter with random (non-zero) weights, saved the way PEFT saves a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(models.resolve(spec))  # a fresh copy: the cached one stays clean
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = run.adapter_dir(name)
    peft.save_pretrained(out)
    if base_name is not None:
        cfg = json.loads((out / "adapter_config.json").read_text())
        (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base_name}))
    return out


def write_training(run, prompts: list[str]) -> None:
    run.append("instructions", [{"id": f"train-{i}", "prompt": p, "source": "test"} for i, p in enumerate(prompts)])
    run.record_stage("sample", {"model": "tiny-random"})


def heldout_file(tmp_path, prompts: list[str]):
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def cfg(**kw) -> CompareConfig:
    return CompareConfig(**{"max_new_tokens": 8, "batch_size": 4, "bootstrap": 200, **kw})


HELD = ["Why do we have leap years?", "Name three uses of a paperclip.", "What is a prime number? | pipes\nnewline"]


@pytest.fixture
def two_adapters(run):
    write_training(run, ["Explain why the sky is blue.", "Write a haiku about autumn."])
    make_adapter(run, "judge", seed=1)
    make_adapter(run, "pairrm", seed=2)
    return run


def has_lora(model) -> bool:
    return any("lora" in name for name, _ in model.named_modules())


# ---- duplicates ------------------------------------------------------------------------------------------------------
def test_duplicates_exact_near_and_distinct():
    training = {"t1": "How do I boil an egg so the yolk stays soft?", "t2": "Write a haiku about autumn."}
    held = [{"id": "h1", "prompt": "how do I boil an egg, so the yolk stays soft"},
            {"id": "h2", "prompt": "How do I boil an egg so that the yolk stays soft?"},
            {"id": "h3", "prompt": "Write a haiku about winter."},
            {"id": "h4", "prompt": "What is the capital of Peru?"}]
    found = compare.find_duplicates(held, training, 0.7)
    assert found["h1"] == {"of": "t1", "kind": "exact", "similarity": 1.0}
    assert found["h2"]["kind"] == "near" and found["h2"]["of"] == "t1" and 0.7 <= found["h2"]["similarity"] < 1
    assert "h3" not in found and "h4" not in found  # another season is another instruction


def test_training_prompts_include_pairs(run):
    write_training(run, ["A"])
    pair = {"prompt": [{"role": "user", "content": "From a pairs file only"}], "chosen": [], "rejected": [],
            "meta": {"instruction_id": "x1"}}
    run.pairs_file("judge").write_text(json.dumps(pair) + "\n")
    assert compare.training_prompts(run) == {"train-0": "A", "x1": "From a pairs file only"}


def test_all_heldout_are_training_instructions_is_refused(two_adapters, tmp_path):
    src = heldout_file(tmp_path, ["explain why the SKY is blue", "Write a haiku about autumn"])
    with pytest.raises(LabError, match="All 2 held-out instructions .* are training instructions"):
        compare.compare_run(two_adapters, cfg(instructions=src))
    assert not two_adapters.file("compare").exists()


def test_duplicate_policies(two_adapters, tmp_path, tiny):
    src = heldout_file(tmp_path, ["Explain why the sky is blue!", *HELD[:2]])
    with pytest.raises(LabError, match="1 held-out instruction.*--duplicates drop"):
        compare.compare_run(two_adapters, cfg(instructions=src, duplicates="refuse"))
    out = compare.compare_run(two_adapters, cfg(instructions=src, duplicates="drop"))
    assert out["instructions"] == 2 and out["duplicates"] == 1
    compare.compare_run(two_adapters, cfg(instructions=src, duplicates="flag"))
    df = comparisons.grid(two_adapters)
    assert len(df) == 3 and df["duplicate_of"].tolist() == ["train-0", None, None]
    assert compare.score(two_adapters, cfg(duplicates="flag"))["flagged"] == [df.index[0]]


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_no_adapters_yet(run):
    write_training(run, ["A"])
    with pytest.raises(LabError, match="no adapters yet: train one first"):
        compare.compare_run(run, cfg())


def test_unknown_adapter_name(two_adapters):
    with pytest.raises(LabError, match=r"No adapter 'sft'.*adapters: judge, pairrm"):
        compare.compare_run(two_adapters, cfg(adapters="judge,sft"))


def test_adapter_trained_on_another_base(two_adapters):
    make_adapter(two_adapters, "llama", base_name="meta-llama/Llama-3.2-1B-Instruct")
    with pytest.raises(LabError, match="'llama' was trained on meta-llama/Llama-3.2-1B-Instruct.*--model"):
        compare.compare_run(two_adapters, cfg(adapters="judge,llama"))
    assert not two_adapters.file("compare").exists()


def test_adapter_whose_shapes_do_not_fit(two_adapters, tiny, tmp_path):
    """Same recorded base name, different shapes (a re-built model under the same folder name): refused, and the
    cached base model is left without LoRA layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny.tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    torch.manual_seed(0)
    peft = get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = two_adapters.adapter_dir("misfit")
    peft.save_pretrained(out)
    cfg_json = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg_json, "base_model_name_or_path": tiny.path}))
    with pytest.raises(LabError, match="'misfit' does not fit this base model"):
        compare.compare_run(two_adapters, cfg(adapters="judge,misfit", instructions=heldout_file(tmp_path, HELD)))
    assert not has_lora(tiny.model)


def test_empty_instruction_file(two_adapters, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(LabError, match="no instructions found"):
        compare.compare_run(two_adapters, cfg(instructions=str(empty)))


def test_bad_settings():
    with pytest.raises(LabError, match="--near-duplicate"):
        cfg(near_duplicate=0).validate()
    with pytest.raises(LabError, match="--top-p"):
        cfg(top_p=0).validate()


def test_grid_before_any_comparison(run):
    with pytest.raises(LabError, match="no comparison yet"):
        comparisons.grid(run)


# ---- generation with switched adapters ---------------------------------------------------------------------------
def test_base_column_equals_plain_base_and_adapters_differ(two_adapters, tmp_path, tiny):
    from lab.generation import Decoding, generate

    c = cfg(instructions=heldout_file(tmp_path, HELD))
    out = compare.compare_run(two_adapters, c)
    assert out["models"] == ["base", "judge", "pairrm"] and out["written_now"] == 9
    assert not has_lora(tiny.model)  # the LoRA layers are stripped again after the comparison
    df = comparisons.grid(two_adapters)
    assert list(df.columns) == ["prompt", "duplicate_of", "base", "judge", "pairrm"]
    assert df["prompt"].tolist() == HELD
    dec = c.decoding().to_dict()
    plain = [c[0].text for c in generate(tiny, HELD, 1, Decoding(**dec), c.batch_size)]
    assert df["base"].tolist() == plain  # same batches, same seeds: the base inside PEFT is the plain base
    assert df["judge"].tolist() != plain and df["pairrm"].tolist() != df["judge"].tolist()
    recs = two_adapters.read("compare")
    assert {r["model"]: r["adapter_path"] for r in recs}["judge"] == str(two_adapters.adapter_dir("judge"))
    assert all(r["decoding"] == dec and r["base_model"] == "tiny-random" for r in recs)


def test_resume_after_stop_gives_the_same_grid(two_adapters, tmp_path):
    src = heldout_file(tmp_path, HELD)

    class StopAfterFirstUnit(Progress):
        def check_stop(self):
            if self.desc == "comparing" and two_adapters.file("compare").exists():
                raise Stopped("stop")

    with pytest.raises(Stopped):
        compare.compare_run(two_adapters, cfg(instructions=src, batch_size=2), StopAfterFirstUnit(quiet=True))
    assert len(two_adapters.read("compare")) == 2  # one chunk of two instructions, whole
    resumed = compare.compare_run(two_adapters, cfg(instructions=src, batch_size=2))
    assert resumed["written_now"] == 7
    again = compare.compare_run(two_adapters, cfg(instructions=src, batch_size=2))
    assert again["written_now"] == 0
    first = comparisons.grid(two_adapters)
    two_adapters.file("compare").unlink()
    compare.compare_run(two_adapters, cfg(instructions=src, batch_size=2))
    pd.testing.assert_frame_equal(first, comparisons.grid(two_adapters))


def test_other_settings_are_history_not_mixed(two_adapters, tmp_path):
    src = heldout_file(tmp_path, HELD)
    compare.compare_run(two_adapters, cfg(instructions=src, adapters="judge"))
    compare.compare_run(two_adapters, cfg(instructions=src, adapters="judge", temperature=0.0))
    assert len(two_adapters.read("compare")) == 12  # both kept in the file
    records, st = comparisons.current(two_adapters)
    assert len(records) == 6 and {r["decoding"]["temperature"] for r in records} == {0.0}


# ---- exports -----------------------------------------------------------------------------------------------------
def test_exports_round_trip(two_adapters, tmp_path):
    compare.compare_run(two_adapters, cfg(instructions=heldout_file(tmp_path, HELD)))
    df = comparisons.grid(two_adapters)
    back = pd.read_csv(compare.export(two_adapters, "csv"), index_col="instruction_id", keep_default_na=False)
    assert back["pairrm"].tolist() == df["pairrm"].tolist() and back["prompt"].tolist() == HELD
    lines = compare.export(two_adapters, "jsonl").read_text().splitlines()
    assert [json.loads(x)["base"] for x in lines] == df["base"].tolist()
    assert json.loads(lines[0])["duplicate_of"] is None
    md = compare.export(two_adapters, "md").read_text().splitlines()
    assert md[0] == "| instruction_id | prompt | duplicate_of | base | judge | pairrm |" and len(md) == 2 + len(HELD)
    assert "What is a prime number? \\| pipes<br>newline" in md[-1]  # a cell never breaks the table
    with pytest.raises(LabError, match="use csv, jsonl or md"):
        compare.export(two_adapters, "xlsx")


# ---- scores --------------------------------------------------------------------------------------------------------
def test_distinct_n():
    assert compare_scorers.distinct_n(["a b a b"], 1) == 0.5
    assert compare_scorers.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert compare_scorers.distinct_n(["a b", "a b"], 2) == 0.5  # counted over all texts of a model
    assert compare_scorers.distinct_n(["", "x"], 2) == 0.0


def test_refusals():
    assert compare_scorers.is_refusal("I'm sorry, but I can't help with that.")
    assert compare_scorers.is_refusal("As an AI language model, I do not have opinions.")
    assert not compare_scorers.is_refusal("Sorry to hear that! Here is how to fix your bike: ...")
    assert not compare_scorers.is_refusal("x" * 400 + " I cannot help you with that")  # not in the opening


def test_bootstrap_interval():
    from lab import stats

    assert stats.bootstrap_ci([1.0] * 10, 500, 0.95) == (1.0, 1.0)
    values = [1.0] * 30 + [0.0] * 10
    lo, hi = stats.bootstrap_ci(values, 2000, 0.95)
    assert 0.6 < lo < 0.75 < hi < 0.9
    assert stats.bootstrap_ci(values, 2000, 0.95) == (lo, hi)  # seeded
    assert stats.bootstrap_ci(values, 2000, 0.5)[0] > lo  # a lower confidence, a narrower interval
    rate = stats.win_rate([1.0, 0.5, 0.0, 1.0], cfg().bootstrap, cfg().confidence, cfg().seed)
    assert (rate["win_rate"], rate["wins"], rate["ties"], rate["losses"], rate["n"]) == (0.625, 2, 1, 1, 4)


def test_scores_file(two_adapters, tmp_path):
    compare.compare_run(two_adapters, cfg(instructions=heldout_file(tmp_path, HELD)))
    scores = json.loads(two_adapters.file("compare_scores").read_text())
    records = {(r["model"], r["instruction_id"]): r for r in two_adapters.read("compare")}
    base_chars = sum(len(r["text"]) for (m, _), r in records.items() if m == "base") / 3
    judge_chars = sum(len(r["text"]) for (m, _), r in records.items() if m == "judge") / 3
    per = scores["per_model"]
    assert per["base"]["mean_chars"] == pytest.approx(base_chars) and per["base"]["chars_change"] is None
    assert per["judge"]["chars_change"] == pytest.approx(judge_chars - base_chars)
    assert per["judge"]["truncated_rate"] == 1.0  # 8 new tokens of noise never reach an end of turn
    assert 0 < per["pairrm"]["distinct_1"] <= 1 and per["pairrm"]["refusal_rate"] == 0
    assert scores["models"] == ["base", "judge", "pairrm"] and scores["n_instructions"] == 3


# ---- notes -----------------------------------------------------------------------------------------------------------
def test_notes_are_saved_with_the_run(run):
    assert comparisons.read_notes(run) == {"overall": "", "instructions": {}}
    compare.save_note(run, "  longer, more lists  ")
    compare.save_note(run, "judge adapter hedges", "heldout-001")
    compare.save_note(run, "fine", "heldout-002")
    compare.save_note(run, "", "heldout-002")
    from lab.store import Run

    again = comparisons.read_notes(Run.open(run.name))
    assert again == {"overall": "longer, more lists", "instructions": {"heldout-001": "judge adapter hedges"}}


# ---- win rates: PairRM and the LLM judge ---------------------------------------------------------------------------
def test_pairrm_win_rates(two_adapters, tmp_path):
    out = compare.compare_run(two_adapters, cfg(instructions=heldout_file(tmp_path, HELD), pairrm="tiny-random"))
    for name in ("judge", "pairrm"):
        w = out["win_rates"][name]["pairrm"]
        assert w["n"] == 3 and w["wins"] + w["ties"] + w["losses"] == 3
        assert 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1
    nested = next((two_adapters.file("compare_scoring")).iterdir())
    from lab.store import Run

    rankings = Run(nested).read("rankings")
    assert len(rankings) == 3 and all(r["sample_indices"] == [0, 1, 2] for r in rankings)
    expected = [1.0 if preference(r, 1, 0) > 0 else 0.0 for r in rankings]
    assert out["win_rates"]["judge"]["pairrm"]["win_rate"] == pytest.approx(sum(expected) / 3)
    per_instruction = compare_scorers.read_scores(two_adapters)["outcomes"]["judge"]["pairrm"]  # what the grid shows
    order = [r["instruction_id"] for r in rankings]
    assert [per_instruction[i] for i in order] == expected and len(per_instruction) == 3
    compare.score(two_adapters, cfg(pairrm="tiny-random"))
    assert len(Run(nested).read("rankings")) == 3  # the same texts are not ranked again
    scores = json.loads(two_adapters.file("compare_scores").read_text())
    for w in (scores["win_rates"]["judge"]["pairrm"], scores["head_to_head"]["pairrm vs judge"]["pairrm"]):
        assert 0 <= w["lc_ci_low"] <= w["lc_win_rate"] <= w["lc_ci_high"] <= 1  # the length-controlled rate beside
    grid = comparisons.grid(two_adapters)
    gaps = [len(grid.loc[i, "judge"]) - len(grid.loc[i, "base"]) for i in grid.index]
    assert scores["win_rates"]["judge"]["pairrm"]["lc_win_rate"] == pytest.approx(
        lc_win_rate(expected, gaps, 200)["lc_win_rate"])  # the comparison's own outcomes and length gaps


KEY = "sk-compare-test-key"


def test_llm_judge_win_rates_both_orders(two_adapters, tmp_path, monkeypatch):
    """A scripted judge over real HTTP: it always prefers the 'judge' adapter's text, and against the 'pairrm'
    adapter it always names the first position, so the two orders disagree (inconsistent = 0.5)."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from fakeprovider import FakeProvider, first_shown, json_verdict, user_text

    compare.compare_run(two_adapters, cfg(instructions=heldout_file(tmp_path, HELD)))
    texts = {(r["model"], r["instruction_id"]): r["text"] for r in two_adapters.read("compare")}
    judge_texts = [t for (m, _), t in texts.items() if m == "judge"]

    def answer(req):
        body = user_text(req)
        favourite = next((t for t in judge_texts if t in body), None)
        if favourite is None:  # base vs pairrm: always the first shown
            return json_verdict("A")
        shown_first = first_shown(req, *[t for t in texts.values() if t in body])
        return json_verdict("A" if shown_first == favourite else "B")

    monkeypatch.setenv("GROQ_API_KEY", KEY)
    with FakeProvider(key=KEY, answer=answer) as fp:
        monkeypatch.setenv("GROQ_BASE_URL", fp.url)
        scores = compare.score(two_adapters, cfg(judge="groq", judge_model="judge-model", judge_rpm=0.0))
        assert fp.calls == 3 * 3 * 2  # 3 instructions, every pair of 3 models, both orders
    w = scores["win_rates"]
    assert (w["judge"]["judge"]["win_rate"], w["judge"]["judge"]["wins"]) == (1.0, 3)
    assert (w["pairrm"]["judge"]["win_rate"], w["pairrm"]["judge"]["ties"]) == (0.5, 3)
    for path in two_adapters.path.rglob("*"):
        assert not path.is_file() or KEY not in path.read_text(errors="ignore")  # the key reaches no file


def test_api_judge_without_key_fails_before_generating(two_adapters, tmp_path):
    with pytest.raises(LabError, match="GROQ_API_KEY"):
        compare.compare_run(two_adapters, cfg(instructions=heldout_file(tmp_path, HELD), judge="groq"))
    assert not two_adapters.file("compare").exists()


# ---- command line ----------------------------------------------------------------------------------------------------
def test_cli_compare_writes_grid_scores_and_exports(two_adapters, tmp_path, capsys):
    from lab.cli import main

    rc = main(["compare", "--run", two_adapters.name, "--instructions", heldout_file(tmp_path, HELD),
               "--max-new-tokens", "6", "--bootstrap", "200"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"] == ["base", "judge", "pairrm"] and len(summary["exports"]) == 3
    assert all(__import__("pathlib").Path(p).exists() for p in summary["exports"])
    assert two_adapters.file("compare_scores").exists()


def test_cli_compare_without_adapters_exits_2(run, capsys):
    from lab.cli import main

    write_training(run, ["A"])
    assert main(["compare", "--run", run.name]) == 2
    assert "no adapters yet" in capsys.readouterr().err


# ---- end to end on the bundled model -------------------------------------------------------------------------------
@pytest.mark.slow
def test_bundled_compare_writes_grid_and_scores(run, tmp_path, monkeypatch):
    """SmolLM2-135M with two LoRA adapters, PairRM (tiny, offline) and an API judge over HTTP: grid + scores."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from fakeprovider import FakeProvider, json_verdict

    run.record_stage("sample", {"model": "bundled"})
    run.append("instructions", [{"id": "train-x", "prompt": "Explain why the sky is blue.", "source": "test"}])
    make_adapter(run, "judge", spec="bundled", seed=1)
    make_adapter(run, "pairrm", spec="bundled", seed=2)
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    with FakeProvider(key=KEY, answer=lambda req: json_verdict("tie")) as fp:
        monkeypatch.setenv("GROQ_BASE_URL", fp.url)
        out = compare.compare_run(run, CompareConfig(n=4, max_new_tokens=24, pairrm="tiny-random", judge="groq",
                                                     judge_rpm=0.0, bootstrap=500))
    df = comparisons.grid(run)
    assert df.shape == (4, 5) and df[["base", "judge", "pairrm"]].map(len).to_numpy().min() > 0
    scores = json.loads(run.file("compare_scores").read_text())
    for name in ("judge", "pairrm"):
        assert scores["win_rates"][name]["pairrm"]["n"] == 4
        assert scores["win_rates"][name]["judge"]["win_rate"] == 0.5  # a judge that always says tie
    assert scores["per_model"]["base"]["mean_tokens"] > 0 and out["instructions"] == 4
    assert df["base"].tolist() != df["judge"].tolist()


def test_retrained_adapter_is_generated_again(two_adapters, tmp_path):
    src = heldout_file(tmp_path, HELD)
    compare.compare_run(two_adapters, cfg(instructions=src))
    before = comparisons.grid(two_adapters)
    make_adapter(two_adapters, "judge", seed=7)  # same name, new weights
    out = compare.compare_run(two_adapters, cfg(instructions=src))
    assert out["written_now"] == 3  # only the retrained adapter's column
    after = comparisons.grid(two_adapters)
    assert after["base"].tolist() == before["base"].tolist() and after["judge"].tolist() != before["judge"].tolist()


def test_local_judge_win_rates(two_adapters, tmp_path):
    """The offline judge (lab.judge's local backend) on every pair, both orders: verdicts from label probabilities."""
    out = compare.compare_run(two_adapters, cfg(instructions=heldout_file(tmp_path, HELD), judge="local",
                                                judge_model="tiny-random"))
    from lab.store import Run

    nested = Run(next(two_adapters.file("compare_scoring").iterdir()))
    assert len(nested.read("judgments")) == 3 * 3 * 2 and {j["backend"] for j in nested.read("judgments")} == {"local"}
    for name in ("judge", "pairrm"):
        w = out["win_rates"][name]["judge"]
        assert w["n"] == 3 and 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1
