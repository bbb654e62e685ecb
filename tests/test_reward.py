"""Reward models as rankers (lab.reward through lab.rank) on tiny-reward, the random reward model the project builds:
rewards checked against the model read the way reward-model cards do it, then rank -> pairs -> train -> compare."""
import json

import pytest

from lab import compare, compare_scorers, models, noise, rank, reward
from lab.cli import main
from lab.compare import CompareConfig
from lab.errors import LabError
from lab.pairs import PairsConfig, build_pairs, judge_vs_ranker
from lab.rank import RankConfig
from lab.records import comparisons
from lab.records.rankings import latest_rankings, preference
from lab.stats import bootstrap_ci
from prefdata import judge_pair, write_samples

SKY = "Why is the sky blue?"
DATA = {"i1": (SKY, ["Rayleigh scattering: air scatters short (blue) wavelengths more.", "I don't know.",
                     "Because the ocean reflects onto it.", "Blue light scatters most in air."]),
        "i2": ("Name a prime number.", ["7", "Seven is prime.", "9"]),
        "i3": ("Say hello.", ["Hello!"])}


@pytest.fixture(scope="module")
def rm():
    return rank.load_ranker("tiny-reward", device="cpu")


def card_rewards(rm, prompt: str, answers: list[str]) -> list[float]:
    """The reward-model card's recipe, one conversation at a time: the model's chat template over prompt + answer,
    the logit of its one label."""
    import torch

    out = []
    for a in answers:
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": a}]
        text = rm.tokenizer.apply_chat_template(conv, tokenize=False, date_string=models.PINNED_DATE)
        ids = rm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out.append(rm.model(input_ids=ids).logits[0][0].item())
    return out


def test_tiny_reward_is_a_one_label_sequence_classifier(rm):
    folder = rank.resolve_ranker("tiny-reward")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and rank.kind_of(folder) == "reward"
    assert rm.kind == "reward" and rm.model.config.num_labels == 1 and rm.max_length == reward.TINY_MAX_LENGTH
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id
    assert noise.label("ranker", "tiny-reward").startswith("Noise")


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_batched_rewards_equal_the_model_read_one_conversation_at_a_time(rm, batch_size):
    groups = [(p, texts) for p, texts in (DATA["i1"], DATA["i2"])]
    got = rank.RANKERS["reward"].fields(rm, groups, batch_size)
    for (prompt, answers), fields in zip(groups, got):
        assert fields["scores"] == pytest.approx(card_rewards(rm, prompt, answers), abs=1e-4)
        assert fields["ranks"][fields["scores"].index(max(fields["scores"]))] == 1
    assert max(got[0]["scores"]) - min(got[0]["scores"]) > 1e-2  # the random model does tell answers apart


def test_rank_run_writes_reward_records_beside_pairrm_ones(run, rm):
    long = " ".join(["word"] * 700)
    write_samples(run, {**DATA, "long": (SKY, ["short answer", long])})
    summary = rank.run(run, RankConfig(ranker="tiny-reward", device="cpu", batch_size=4))
    assert summary["ranked"] == 3 and summary["kind"] == "reward" and summary["single_response"] == ["i3"]
    rec = latest_rankings(run, "reward")["i1"]
    assert rec["kind"] == "reward" and "logits" not in rec and rec["max_length"] == reward.TINY_MAX_LENGTH
    assert rec["scores"] == pytest.approx(card_rewards(rm, SKY, DATA["i1"][1]), abs=1e-4)
    assert preference(rec, 0, 1) == pytest.approx(rec["scores"][0] - rec["scores"][1])
    cut = latest_rankings(run, "reward")["long"]
    full = len(reward.encode(rm, SKY, long)[0]) + cut["tokens_cut"][1]
    conversation = rm.tokenizer.apply_chat_template([{"role": "user", "content": SKY}, {"role": "assistant",
                                                    "content": long}], tokenize=False, date_string=models.PINNED_DATE)
    assert full == len(rm.tokenizer(conversation, add_special_tokens=False)["input_ids"]) > reward.TINY_MAX_LENGTH
    assert cut["truncated"] == [False, True] and cut["tokens_cut"][0] == 0
    rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))  # PairRM's lines go beside the reward model's
    assert set(latest_rankings(run, "pairrm")) == set(latest_rankings(run, "reward")) == {"i1", "i2", "long"}
    again = rank.run(run, RankConfig(ranker="tiny-reward", device="cpu"))
    assert again["ranked"] == 0 and again["already_ranked"] == 3  # each ranker resumes on its own lines


def test_reward_pairs_are_best_vs_worst_by_reward(run):
    write_samples(run, DATA)
    rank.run(run, RankConfig(ranker="tiny-reward", device="cpu"))
    stats = build_pairs(run, PairsConfig(source="reward"))
    pairs = [json.loads(x) for x in run.pairs_file("reward").read_text().splitlines()]
    assert stats["pairs"] == 2 and stats["single_response"] == 1
    for p in pairs:
        rec = latest_rankings(run, "reward")[p["meta"]["instruction_id"]]
        s = rec["scores"]
        assert (p["meta"]["chosen_index"], p["meta"]["rejected_index"]) == (s.index(max(s)), s.index(min(s)))
        assert p["meta"]["by"] == "reward" and p["meta"]["strength"] == pytest.approx(max(s) - min(s), abs=1e-5)
    assert any("tiny-reward" in n for n in noise.notes(run, "pairs", {"source": "reward"}))
    with pytest.raises(LabError, match="no PairRM rankings"):
        build_pairs(run, PairsConfig(source="pairrm"))  # the reward model's lines are not PairRM's


def test_judge_vs_reward_model_agreement(run):
    write_samples(run, {"i1": ("Q?", ["w", "x", "y", "z"])})
    # the reward model prefers 0 > 1 > 2 > 3
    run.append("rankings", [{"instruction_id": "i1", "kind": "reward", "sample_indices": [0, 1, 2, 3],
                             "scores": [3.0, 2.0, 1.0, 0.0], "ranks": [1, 2, 3, 4], "truncated": [False] * 4,
                             "tokens_cut": [0] * 4, "max_length": 512, "quantize": "none", "ranker": "test",
                             "ranker_path": "/x", "time": ""}])
    run.append("judgments", judge_pair("i1", 0, 1, "a") + judge_pair("i1", 0, 2, "a") + judge_pair("i1", 1, 2, "b")
               + judge_pair("i1", 2, 3, "a") + judge_pair("i1", 1, 3, "tie"))
    agree = judge_vs_ranker(run, "reward")
    # judge decisive on 4 pairs: a,a,b,a vs the reward model a,a,a,a -> 3 agree; kappa 0 (one label on one side)
    assert agree["n"] == 4 and agree["agree"] == 3 and agree["kappa"] == 0.0 and agree["judge_undecided"] == {"tie": 1}
    stats = build_pairs(run, PairsConfig(source="judge"))
    assert stats["judge_vs_reward"]["n"] == 4 and "judge_vs_pairrm" not in stats  # no PairRM lines in this run
    from lab.ui.rank import stats_md

    assert "judge vs Reward model on the same 4 response pairs: agree 75%" in stats_md(stats)


def test_bad_ranker_specs_say_what_to_fix(run, tmp_path):
    with pytest.raises(LabError, match="neither an llm-blender ranker.*nor a reward model"):
        rank.resolve_ranker(str(tmp_path))
    two = tmp_path / "two-labels"
    two.mkdir()
    (two / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"],
                                                 "id2label": {"0": "bad", "1": "good"}}))
    with pytest.raises(LabError, match="one label"):
        rank.resolve_ranker(str(two))
    with pytest.raises(LabError, match="--quantize int8 is for PairRM"):
        rank.load_ranker("tiny-reward", device="cpu", quantize="int8")
    with pytest.raises(LabError, match="pass it as --reward"):
        compare.check_scorers(CompareConfig(pairrm="tiny-reward"), None)
    with pytest.raises(LabError, match="pass it as --pairrm"):
        compare.check_scorers(CompareConfig(reward="tiny-random"), None)


def test_reward_end_to_end_rank_pairs_train_compare(run, tmp_path, capsys):
    """The CLI ranks with tiny-reward and builds reward pairs; DPO trains on them; compare scores base and adapter
    with the reward model: the mean reward per model, the paired difference with its interval, the win rate."""
    from lab.train import TrainConfig, train_adapter

    write_samples(run, DATA)
    run.record_stage("sample", {"model": "tiny-random"})
    assert main(["rank", "--run", run.name, "--ranker", "tiny-reward"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "reward"
    assert main(["pairs", "--run", run.name, "--source", "reward"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 2
    adapter = train_adapter(run, "reward", "dpo-reward", TrainConfig(model="tiny-random", batch_size=2, lr=1e-3,
                                                                     gradient_checkpointing=False, eval_fraction=0.0))
    assert (adapter / "adapter_model.safetensors").exists()
    assert any("tiny-reward" in n for n in noise.notes(run, "train", {"pairs": "reward", "model": "tiny-random"}))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                            ["Why do we have leap years?", "Name three uses of a paperclip.", "What is a prime?"]))
    result = compare.compare_run(run, CompareConfig(instructions=str(held), max_new_tokens=8, batch_size=4,
                                                    bootstrap=200, reward="tiny-reward"))
    scores = compare_scorers.read_scores(run)
    table = compare_scorers.by_model(comparisons.current(run)[0])
    rm = rank.load_ranker("tiny-reward", device="cpu")
    expect = {m: {iid: card_rewards(rm, r["prompt"], [r["text"]])[0] for iid, r in table[m].items()}
              for m in ("base", "dpo-reward")}
    values = scores["values"]["reward"]
    for m, by_iid in expect.items():
        assert values["mean"][m] == pytest.approx(sum(by_iid.values()) / 3, abs=1e-4)
    ids = comparisons.current(run)[1]["instruction_ids"]
    diffs = [expect["dpo-reward"][i] - expect["base"][i] for i in ids]
    d = values["difference"]["dpo-reward"]
    assert d["n"] == 3 and d["diff"] == pytest.approx(sum(diffs) / 3, abs=1e-4)
    assert [d["ci_low"], d["ci_high"]] == pytest.approx(list(bootstrap_ci(diffs, 200, 0.95, 0)), abs=1e-4)
    wins = [1.0 if diff > 0 else 0.0 if diff < 0 else 0.5 for diff in diffs]
    assert result["win_rates"]["dpo-reward"]["reward"]["win_rate"] == pytest.approx(sum(wins) / 3)
    assert any("tiny-reward" in n for n in noise.notes(run, "compare"))
    from lab.report import score_rows
    from lab.ui.compare import scores_table

    header, rows = score_rows(scores)
    row = dict(zip(header, next(r for r in rows if r[:2] == ["dpo-reward", "reward"])))
    assert row["mean_value"] == pytest.approx(values["mean"]["dpo-reward"], abs=1e-4)
    assert row["diff_vs_base"] == pytest.approx(d["diff"], abs=1e-4) and row["win_rate"] is not None

    shown = scores_table(scores, run.stage_settings("compare")).set_index("model")
    assert {"reward win rate ⚠️ random ranker", "mean reward ⚠️ random ranker"} <= set(shown.columns)
    assert shown.loc["base", "mean reward ⚠️ random ranker"] == f"{values['mean']['base']:+.3f}"
    assert shown.loc["dpo-reward", "reward vs base ⚠️ random ranker"].startswith(f"{d['diff']:+.3f} [")


def test_the_pairrm_tab_shows_a_reward_models_ranks_cut_and_noise_label(run):
    from lab.ui import rank as tab

    long = " ".join(["word"] * 700)
    write_samples(run, {"long": (SKY, ["short answer", long]), "i2": DATA["i2"]})
    rank.run(run, RankConfig(ranker="tiny-reward", device="cpu"))
    summary, table, _, _ = tab.refresh(run.name)
    assert "ranked with `tiny-reward` (Reward model: one pass per response)" in summary
    assert "1 responses cut to the ranker's length limit" in summary
    assert "Noise: the reward model is tiny-reward" in summary
    cut = latest_rankings(run, "reward")["long"]["tokens_cut"][1]
    shown = tab.show_ranking(run.name, "long")
    assert f"{cut} tokens cut at the reward model's limit (512)" in shown and shown.count("tokens cut") == 1
