"""Pairs from judge verdicts and PairRM rankings: strategies, dropped verdicts, statistics, agreement, the file."""
import json

import pytest

from lab.cli import main
from lab.pairs import PairsConfig
from lab.rank import RankConfig
from lab.errors import LabError
from lab.pairs import build_pairs, judge_vs_ranker
from lab.stats import cohen_kappa
from prefdata import judge_pair, write_samples

DATA = {"i1": ("Explain tides.", ["The moon's gravity pulls the oceans.", "Water moves.",
                                  "Tides come from the moon and sun.", "Gravity of moon and sun, plus rotation."]),
        "i2": ("Name a colour.", ["Red.", "Blue."]),
        "i3": ("Say hi.", ["Hi!"])}


def judged_run(run):
    """i1: 0>1, 0>2, 2>1, 3>2 decisive; (0,3) inconsistent; (1,3) tie. i2: inconsistent. i3: one response."""
    write_samples(run, DATA)
    calls = (judge_pair("i1", 0, 1, "a") + judge_pair("i1", 0, 2, "a") + judge_pair("i1", 1, 2, "b")
             + judge_pair("i1", 2, 3, "b") + judge_pair("i1", 0, 3, "a", "b") + judge_pair("i1", 1, 3, "tie")
             + judge_pair("i2", 0, 1, "a", "b"))
    run.append("judgments", calls)
    return run


def test_judge_best_vs_worst(run):
    stats = build_pairs(judged_run(run), PairsConfig(source="judge"))
    pairs = [json.loads(x) for x in run.pairs_file("judge").read_text().splitlines()]
    assert len(pairs) == stats["pairs"] == 1
    p = pairs[0]
    # net win rates: 0 -> +1, 1 -> -1, 2 -> -1/3, 3 -> +1; the largest gap among direct verdicts is 0 over 1
    assert p["prompt"] == [{"role": "user", "content": "Explain tides."}]
    assert p["chosen"] == [{"role": "assistant", "content": DATA["i1"][1][0]}]
    assert p["rejected"] == [{"role": "assistant", "content": DATA["i1"][1][1]}]
    assert p["meta"] == {"instruction_id": "i1", "chosen_index": 0, "rejected_index": 1, "source": "judge",
                         "strategy": "best-vs-worst", "by": "judge", "strength": 1.0, "score_chosen": 1.0,
                         "score_rejected": -1.0, "rule": "agree"}
    assert stats["instructions"] == 3 and stats["instructions_without_pair"] == 2 and stats["single_response"] == 1
    assert stats["dropped"] == {"inconsistent": 2, "tie": 1}


def test_judge_all_pairs_and_margin(run):
    judged_run(run)
    stats = build_pairs(run, PairsConfig(source="judge", strategy="all-pairs"))
    meta = [json.loads(x)["meta"] for x in run.pairs_file("judge").read_text().splitlines()]
    assert {(m["chosen_index"], m["rejected_index"]) for m in meta} == {(0, 1), (0, 2), (2, 1), (3, 2)}
    assert stats["pairs"] == 4
    assert build_pairs(run, PairsConfig(source="judge", strategy="all-pairs", margin=1.5))["pairs"] == 0
    assert run.pairs_file("judge").read_text() == ""  # rebuilt whole: the old pairs are gone


def test_trl_reads_the_pairs_as_conversational(run):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from lab import models

    build_pairs(judged_run(run), PairsConfig(source="judge", strategy="all-pairs"))
    tok = models.load_tokenizer("bundled")
    for line in run.pairs_file("judge").read_text().splitlines():
        example = json.loads(line)
        assert is_conversational(example)
        rendered = maybe_apply_chat_template({k: example[k] for k in ("prompt", "chosen", "rejected")}, tok)
        assert "Explain tides." in rendered["prompt"] and rendered["chosen"].strip()


def test_single_order_verdict_is_kept_and_marked(run):
    write_samples(run, {"i2": DATA["i2"]})
    run.append("judgments", judge_pair("i2", 0, 1, "b", ""))
    build_pairs(run, PairsConfig(source="judge"))
    meta = json.loads(run.pairs_file("judge").read_text())["meta"]
    assert (meta["chosen_index"], meta["single"]) == (1, True)


def test_identical_responses_never_make_a_pair(run):
    write_samples(run, {"i1": ("Q?", ["Same answer.", "Same answer."])})
    run.append("judgments", judge_pair("i1", 0, 1, "a"))
    stats = build_pairs(run, PairsConfig(source="judge"))
    assert stats["pairs"] == 0 and stats["dropped"]["identical"] == 1


def test_verdict_on_a_response_not_in_samples_is_dropped_not_a_crash(run):
    write_samples(run, {"i2": DATA["i2"]})
    run.append("judgments", judge_pair("i2", 0, 7, "a") + judge_pair("gone", 0, 1, "a") + judge_pair("i2", 0, 1, "a"))
    stats = build_pairs(run, PairsConfig(source="judge", strategy="all-pairs"))
    assert stats["pairs"] == 1 and stats["dropped"] == {"missing_response": 2}


def test_length_warning_when_longer_always_wins(run):
    data = {f"i{n}": (f"Question {n}?", ["Short.", "A much longer and more detailed answer " * 3]) for n in range(6)}
    write_samples(run, data)
    run.append("judgments", [c for iid in data for c in judge_pair(iid, 0, 1, "b")])
    stats = build_pairs(run, PairsConfig(source="judge"))
    assert stats["longer_chosen_rate"] == 1.0 and "longer answer is chosen in 100%" in stats["length_warning"]
    assert stats["mean_chars_chosen"] > stats["mean_chars_rejected"]
    run.append("judgments", [c for iid in list(data)[:3] for c in judge_pair(iid, 0, 1, "a")])  # half flip
    assert build_pairs(run, PairsConfig(source="judge"))["length_warning"] is None


def rankings_line(iid: str, logits: list[list[float]]) -> dict:
    """A rankings.jsonl record (lab/rank.py format) with chosen logits."""
    from lab.rank import scores_and_ranks

    scores, ranks = scores_and_ranks(logits)
    k = len(logits)
    return {"instruction_id": iid, "sample_indices": list(range(k)), "scores": scores, "ranks": ranks,
            "logits": logits, "ranker": "test", "ranker_path": "/x", "source_max_length": 1224,
            "candidate_max_length": 412, "truncated": [False] * k, "time": ""}


def test_pairrm_pairs_from_real_rankings(run):
    from lab import rank
    from lab.records.rankings import latest_rankings, preference

    write_samples(run, DATA)
    rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))
    stats = build_pairs(run, PairsConfig(source="pairrm"))
    rec = latest_rankings(run)["i1"]
    pairs = [json.loads(x) for x in run.pairs_file("pairrm").read_text().splitlines()]
    assert stats["pairs"] == 2 and stats["single_response"] == 1  # i1 and i2; i3 has one response
    m = next(p["meta"] for p in pairs if p["meta"]["instruction_id"] == "i1")
    direct = [(rec["scores"][w] - rec["scores"][l], w, l) for w in range(4) for l in range(4)
              if w != l and preference(rec, w, l) > 0]
    assert (m["chosen_index"], m["rejected_index"]) == max(direct)[1:]
    assert m["strength"] == pytest.approx(preference(rec, m["chosen_index"], m["rejected_index"]), abs=1e-5)
    margin = sorted(abs(preference(rec, a, b)) for a in range(4) for b in range(a + 1, 4))[3]
    all_pairs = build_pairs(run, PairsConfig(source="pairrm", strategy="all-pairs", margin=margin))
    i2 = abs(preference(latest_rankings(run)["i2"], 0, 1)) >= margin
    assert all_pairs["pairs"] == 3 + i2  # the 3 strongest of i1's 6 pairs (+ i2's if strong enough)


def test_pairrm_margin_applies_to_the_logit(run):
    write_samples(run, {"i1": ("Q?", ["x", "y", "z"])})
    # both-orders logits: 0 over 1: 2.0, 0 over 2: 0.2, 1 over 2: -0.6 (2 preferred)
    run.append("rankings", [rankings_line("i1", [[0, 1.5, 0.1], [-0.5, 0, -0.3], [-0.1, 0.3, 0]])])
    stats = build_pairs(run, PairsConfig(source="pairrm", strategy="all-pairs", margin=0.5))
    meta = [json.loads(x)["meta"] for x in run.pairs_file("pairrm").read_text().splitlines()]
    assert {(m["chosen_index"], m["rejected_index"]) for m in meta} == {(0, 1), (2, 1)}
    assert stats["dropped"]["below_margin"] == 1


def test_cohen_kappa_known_values():
    assert cohen_kappa(list("aabb"), list("abbb")) == pytest.approx(0.5)  # p_o .75, p_e .5
    assert cohen_kappa(list("abab"), list("abab")) == 1.0
    assert cohen_kappa(list("abab"), list("baba")) == -1.0
    assert cohen_kappa(list("aaaa"), list("aaaa")) is None  # undefined: no variation


def test_judge_vs_pairrm_agreement_on_same_pairs(run):
    write_samples(run, {"i1": ("Q?", ["w", "x", "y", "z"])})
    # PairRM prefers 0 > 1 > 2 > 3 (logits[i][j] = j - i)
    run.append("rankings", [rankings_line("i1", [[float(j - i) for j in range(4)] for i in range(4)])])
    run.append("judgments", judge_pair("i1", 0, 1, "a") + judge_pair("i1", 0, 2, "a") + judge_pair("i1", 1, 2, "b")
               + judge_pair("i1", 2, 3, "b") + judge_pair("i1", 0, 3, "a", "b") + judge_pair("i1", 1, 3, "tie"))
    agree = judge_vs_ranker(run, "pairrm")
    # judge decisive on 4 pairs: a,a,b,b vs PairRM a,a,a,a -> 2 agree; kappa 0 (PairRM has one label)
    assert agree["n"] == 4 and agree["agree"] == 2 and agree["rate"] == 0.5 and agree["kappa"] == 0.0
    assert agree["judge_undecided"] == {"inconsistent": 1, "tie": 1}
    assert build_pairs(run, PairsConfig(source="judge"))["judge_vs_pairrm"]["n"] == 4


def test_errors_leave_existing_pairs_untouched(run):
    with pytest.raises(LabError, match="no samples yet"):
        build_pairs(run, PairsConfig(source="judge"))
    write_samples(run, DATA)
    with pytest.raises(LabError, match="no judgments.*lab judge"):
        build_pairs(run, PairsConfig(source="judge"))
    with pytest.raises(LabError, match="no PairRM rankings.*lab rank"):
        build_pairs(run, PairsConfig(source="pairrm"))
    run.pairs_file("judge").write_text("keep\n")
    with pytest.raises(LabError):
        build_pairs(run, PairsConfig(source="judge"))
    assert run.pairs_file("judge").read_text() == "keep\n"
    with pytest.raises(LabError, match="margin"):
        build_pairs(run, PairsConfig(margin=-1))


def test_cli_pairs(run, capsys):
    data = {f"i{n}": (f"Question {n}?", ["Short.", "A much longer and more detailed answer."]) for n in range(5)}
    write_samples(run, data)
    run.append("judgments", [c for iid in data for c in judge_pair(iid, 0, 1, "b")])
    assert main(["pairs", "--run", run.name, "--source", "judge", "--strategy", "all-pairs"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["pairs"] == 5 and "warning: The longer answer" in out.err
    assert run.stage_settings("pairs-judge")["stats"]["pairs"] == 5
    assert main(["pairs", "--run", run.name, "--source", "pairrm"]) == 2
    assert "no PairRM rankings" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_bundled_samples_ranked_in_a_job_then_paired(runs_dir):
    """Real samples from the bundled model -> `rank` as a lab job (the app's path) -> PairRM pairs."""
    from lab import jobs
    from lab.store import Run

    run = Run.open("e2e")
    assert main(["sample", "--run", "e2e", "--model", "bundled", "--n", "2", "--k", "3", "--max-new-tokens", "16",
                 "--device", "cpu"]) == 0
    jobs.start(run, ["rank", "--run", run.name, "--ranker", "tiny-random", "--device", "cpu"], "PairRM")
    state = jobs.wait(run, timeout_s=300)
    assert state["state"] == "done", state.get("log_tail")
    assert state["progress"]["done"] == state["progress"]["total"] == 2
    stats = build_pairs(run, PairsConfig(source="pairrm"))
    samples = {(s["instruction_id"], s["sample_index"]): s["text"] for s in run.read("samples")}
    pairs = [json.loads(x) for x in run.pairs_file("pairrm").read_text().splitlines()]
    assert stats["pairs"] == len(pairs) >= 1
    for p in pairs:
        m = p["meta"]
        assert p["chosen"][0]["content"] == samples[(m["instruction_id"], m["chosen_index"])]
        assert p["rejected"][0]["content"] == samples[(m["instruction_id"], m["rejected_index"])]
