"""The LLM judge: verdict folding, parsing, plans, the real groq/openai SDKs against a local server, faults, the cache,
resume after a kill, the rate limiter, the local judge on tiny-random (fast) and on the bundled model (slow)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.errors import LabError
from lab import judge as judge_module
from lab.judge import (DEFAULT_TEMPLATE, SCORES_SUFFIX, JudgeConfig, check_template, estimate, judge_run,
                       load_candidates, parse_output, parse_scores, plan_step, render_prompt)
from lab.judge_backends import LocalBackend, LocalVerdict, _json_string_prefix
from lab.pairs import PairsConfig, build_pairs
from lab.progress import Progress
from lab.records.verdicts import judge_stats, pair_verdicts, run_verdicts
from lab.store import Run
from tests.fakeprovider import Fault, FakeProvider, first_shown, json_verdict

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-0123456789secret"


def add_samples(run: Run, n: int = 3, k: int = 5, texts=None) -> None:
    """n instructions x k responses; response j of instruction i reads 'answer i.j' plus j quality marks ('+')."""
    recs = []
    for i in range(n):
        for j in range(k):
            text = texts[j] if texts else f"answer {i}.{j} " + "+" * j + f" Q{j}Q"
            recs.append({"instruction_id": f"i{i}", "sample_index": j, "prompt": f"Question {i}?", "text": text,
                         "model": "tiny-random", "model_path": "x", "decoding": {}, "prompt_tokens": 3,
                         "completion_tokens": 5, "finish_reason": "stop", "duplicate_of": None})
    run.append("samples", recs)


def prefer_higher(req: dict) -> str:
    """A consistent judge: the response with the higher quality mark QjQ wins, wherever it is shown."""
    marks = [f"Q{j}Q" for j in range(10)]
    first = first_shown(req, *marks)
    shown = [m for m in marks if m in req["messages"][-1]["content"]]
    best = max(shown, key=lambda m: int(m[1]))
    return json_verdict("A" if first == best else "B", f"{best} is more thorough")


def cfg(fp: FakeProvider, backend: str = "groq", **kw) -> JudgeConfig:
    url = fp.url if backend == "groq" else fp.url + "/v1"
    base = dict(backend=backend, model="judge-model", base_url=url, rpm=0.0, concurrency=4, timeout_s=30.0,
                max_retries=3, backoff_s=0.05)
    return JudgeConfig(**{**base, **kw})


@pytest.fixture
def fp(monkeypatch):
    """The provider, configured the way an owner would: the keys and, for them, the provider URL (an environment
    key only goes to its provider's URL: lab.judge_backends.resolve_key)."""
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProvider(key=KEY, answer=prefer_higher) as server:
        monkeypatch.setenv("GROQ_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        yield server


def quiet() -> Progress:
    return Progress(quiet=True)


# ---- folding and figures ------------------------------------------------------------------------------------------
def rec(a, b, order, verdict, iid="i", pv=None, **kw):
    return {"instruction_id": iid, "a": a, "b": b, "order": order, "verdict": verdict, "position_verdict": pv, **kw}


def test_pair_verdicts_folds_both_orders():
    records = [rec(0, 1, "ab", "a"), rec(0, 1, "ba", "a"),            # agree
               rec(0, 2, "ab", "a"), rec(0, 2, "ba", "b"),            # disagree
               rec(0, 3, "ab", "tie"), rec(0, 3, "ba", "a"),          # a tie against a win disagrees too
               rec(0, 4, "ab", "b"),                                  # one order only
               rec(1, 2, "ab", "invalid"), rec(1, 2, "ba", "b"),      # an invalid order does not count
               rec(1, 3, "ab", "invalid"), rec(1, 3, "ba", "invalid"),
               rec(2, 3, "ab", "a"), rec(2, 3, "ba", "b"), rec(2, 3, "ba", "a")]  # the last call per order wins
    got = {(p["a"], p["b"]): p for p in pair_verdicts(records)}
    assert {k: p["verdict"] for k, p in got.items()} == {
        (0, 1): "a", (0, 2): "inconsistent", (0, 3): "inconsistent", (0, 4): "b", (1, 2): "b", (1, 3): "invalid",
        (2, 3): "a"}
    assert {k: p["rule"] for k, p in got.items()} == {
        (0, 1): "agree", (0, 2): "disagree", (0, 3): "disagree", (0, 4): "single", (1, 2): "single",
        (1, 3): "invalid", (2, 3): "agree"}
    assert got[(0, 4)]["single"] and got[(1, 2)]["single"] and "single" not in got[(0, 1)]
    assert [o["order"] for o in got[(0, 2)]["orders"]] == ["ab", "ba"]


def test_orders_that_disagree_are_decided_by_grades_averaged_over_both_orders():
    probs = lambda a, b: {"a": a, "b": b, "tie": round(1 - a - b, 4)}  # noqa: E731  (canonical terms)
    records = [rec(0, 1, "ab", "a", label_probs=probs(0.80, 0.15)), rec(0, 1, "ba", "b", label_probs=probs(0.30, 0.65)),
               rec(0, 2, "ab", "a", label_probs=probs(0.60, 0.38)), rec(0, 2, "ba", "b", label_probs=probs(0.36, 0.61)),
               rec(1, 2, "ab", "a", scores={"a": 8, "b": 6}), rec(1, 2, "ba", "b", scores={"a": 5, "b": 9}),
               rec(1, 3, "ab", "a", label_probs=probs(0.9, 0.05)), rec(1, 3, "ba", "b")]  # one order ungraded
    got = {(p["a"], p["b"]): p for p in pair_verdicts(records, tie_band=0.05)}
    assert got[(0, 1)]["verdict"] == "a" and got[(0, 1)]["rule"] == "calibrated"  # a: (0.80 + 0.30) / 2 = 0.55
    assert got[(0, 1)]["calibrated"] == {"a": 0.55, "b": 0.4}
    assert got[(0, 2)]["verdict"] == "tie" and got[(0, 2)]["rule"] == "calibrated"  # 0.48 vs 0.495: in the band
    assert got[(1, 2)]["verdict"] == "b" and got[(1, 2)]["calibrated"]["b"] > got[(1, 2)]["calibrated"]["a"]
    assert got[(1, 3)]["verdict"] == "inconsistent" and got[(1, 3)]["rule"] == "disagree"
    off = {(p["a"], p["b"]): p["verdict"] for p in pair_verdicts(records, tie_band=None)}
    assert off[(0, 1)] == off[(0, 2)] == "inconsistent"  # calibration off: the FastChat rule
    stats = judge_stats(records, [], tie_band=0.05)
    assert stats["consistency_rate"] == 0.0 and stats["calibrated_pairs"] == 3  # raw figures stay raw


def test_judge_stats_measure_position_and_length_bias():
    samples = [{"instruction_id": "i", "sample_index": j, "text": "x" * (10 * (j + 1))} for j in range(3)]
    records = [rec(0, 1, "ab", "a", pv="A"), rec(0, 1, "ba", "b", pv="A"),   # first position always wins
               rec(0, 2, "ab", "b", pv="B"), rec(0, 2, "ba", "b", pv="A"),   # longer (2) wins consistently
               rec(1, 2, "ab", "invalid", pv=None)]
    s = judge_stats(records, samples)
    assert s["pairs_both_orders"] == 2 and s["consistency_rate"] == 0.5
    assert s["first_position_win_rate"] == 0.75  # 3 of 4 decisive calls went to the response shown first
    assert s["longer_answer_win_rate"] == 1.0 and s["verdicts"]["inconsistent"] == 1 and s["invalid_calls"] == 1
    assert s["rules"]["agree"] == 1 and s["rules"]["disagree"] == 1 and s["calibrated_pairs"] == 0


@pytest.mark.parametrize("text,expected", [
    ('{"reasoning": "B is right", "verdict": "B"}', ("B", "B is right")),
    ('```json\n{"reasoning": "same", "verdict": "tie"}\n```', ("tie", "same")),
    ('Sure! {"reasoning": "x", "verdict": "[[A]]"}', ("A", "x")),
    ('{"reasoning": "it says "hi"", "verdict": "A"}', ("A", "")),   # broken JSON, but the verdict field is literal
    ('{"reasoning": "x", "verdict": "both"}', (None, "x")),
    ("Response A is better.", (None, "")), ("", (None, "")), ('{"verdict": ', (None, "")),
])
def test_parse_output(text, expected):
    assert parse_output(text) == expected


def test_template_is_checked_and_filled_in_one_pass():
    with pytest.raises(LabError, match=r"\{response_b\}"):
        check_template("Judge {instruction} {response_a}")
    out = render_prompt(DEFAULT_TEMPLATE, "Q", "first says {response_b}", "second")
    assert "first says {response_b}" in out and out.index("first says") < out.index("second")
    assert '{"reasoning": "<your comparison>"' in out  # the JSON example's braces are left alone


# ---- plans and their cost -----------------------------------------------------------------------------------------
def test_default_plan_fits_the_budget_and_full_plan_is_all_pairs(run):
    add_samples(run, n=50, k=5)
    knock = estimate(run, JudgeConfig(backend="groq", plan="knockout", rpm=30))
    full = estimate(run, JudgeConfig(backend="groq", plan="full", rpm=30))
    assert knock["calls_total"] == knock["calls_to_make"] == 400 and knock["calls_per_instruction"] == {5: 8}
    assert full["calls_total"] == 1000 and knock["minutes_at_rpm"] == round(400 / 30, 1)
    assert knock["est_cost_usd"] > 0 and knock["model"] == "llama-3.3-70b-versatile"
    cands, _ = load_candidates(run)
    first, total, done = plan_step("knockout", cands, lambda c: None)
    assert len(first) == 50 * 4 and total == 400 and done == 0  # round 1: (0,1) and (2,3), both orders


def test_knockout_reaches_a_preference_for_every_instruction(run, fp):
    add_samples(run, n=4, k=5)
    out = judge_run(run, cfg(fp), quiet())
    assert fp.calls == out["calls_made"] == out["calls"] == 4 * 8
    assert out["instructions_with_preference"] == 4 and out["consistency_rate"] == 1.0
    pairs = pair_verdicts(run.read("judgments"))
    finals = [p for p in pairs if p["b"] == 4]  # response 4 had a bye into the final, and is the best
    assert len(finals) == 4 and all(p["verdict"] == "b" for p in finals)
    assert out["longer_answer_win_rate"] == 1.0 and out["first_position_win_rate"] == 0.5


# ---- the API backends through their real SDKs ---------------------------------------------------------------------
@pytest.mark.parametrize("backend,path", [("groq", "/openai/v1/chat/completions"), ("openai", "/v1/chat/completions")])
def test_api_backends_judge_and_a_rerun_makes_no_calls(run, fp, backend, path):
    add_samples(run, n=2, k=3)
    out = judge_run(run, cfg(fp, backend, plan="full"), quiet())
    assert fp.paths == {path: 12} and out["calls_made"] == 12 and out["verdicts"]["b"] == 6
    body = fp.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["response_format"]["type"] == "json_object"
    recs = run.read("judgments")
    assert {r["order"] for r in recs} == {"ab", "ba"} and all(r["usage"]["completion_tokens"] > 0 for r in recs)
    assert all(r["prompt_hash"] == recs[0]["prompt_hash"] and r["reasoning"] for r in recs)
    again = judge_run(run, cfg(fp, backend, plan="full"), quiet())
    assert fp.calls == 12 and again["calls_made"] == 0 and len(run.read("judgments")) == 12
    judge_run(run, cfg(fp, backend, plan="full"), quiet(), template=DEFAULT_TEMPLATE + "\nBe strict.")
    assert fp.calls == 24  # another prompt is another cache key


def test_a_position_biased_judge_is_recorded_as_inconsistent(run, fp):
    add_samples(run, n=2, k=3)
    fp.answer = lambda req: json_verdict("A", "the first one is better")
    out = judge_run(run, cfg(fp, plan="full"), quiet())
    assert out["verdicts"]["inconsistent"] == 6 and out["consistency_rate"] == 0.0
    assert out["first_position_win_rate"] == 1.0 and out["instructions_with_preference"] == 0


QUALITY = re.compile(r"Q(\d)Q")


class PositionBiasedJudge(LocalBackend):
    """A stand-in local judge with a planted truth and a planted bias: the response with the higher quality mark
    QjQ is truly better by TRUE_EDGE, and the response shown first gets BIAS more probability on top, so its label
    wins every call (what the bundled 135M judge does)."""

    TRUE_EDGE, BIAS = 0.1, 0.3

    def __init__(self, batch_size: int = 8):  # no model to load
        self.batch_size = batch_size

    def judge(self, prompts: list[str], on_step=None) -> list[LocalVerdict]:
        return [self._one(p) for p in prompts]

    def _one(self, prompt: str) -> LocalVerdict:
        body = prompt.split("[Response A]", 1)[1]
        first, second = (int(m) for m in QUALITY.findall(body)[:2])
        edge = self.TRUE_EDGE if first > second else -self.TRUE_EDGE if first < second else 0.0
        p_a = 0.45 + self.BIAS / 2 + edge / 2
        p_b = 0.45 - self.BIAS / 2 - edge / 2
        return LocalVerdict("the first one", {"A": p_a, "B": p_b, "tie": 0.1}, "the first one", 100, 3)


def test_calibration_recovers_the_planted_preference_of_a_position_biased_judge(run, monkeypatch):
    add_samples(run, n=3, k=4)
    monkeypatch.setattr(judge_module, "make_backend", lambda cfg, api_key=None: PositionBiasedJudge())
    out = judge_run(run, JudgeConfig(backend="local", plan="full"), quiet())
    assert out["consistency_rate"] == 0.0 and out["first_position_win_rate"] == 1.0  # the bias stays visible
    verdicts = run_verdicts(run)
    assert len(verdicts) == 3 * 6 and all(v["rule"] == "calibrated" for v in verdicts)
    assert all(v["verdict"] == "b" for v in verdicts)  # b > a always carries the higher quality mark
    assert out["instructions_with_preference"] == 3 and out["calibrated_pairs"] == 18
    stats = build_pairs(run, PairsConfig(source="judge"))
    pairs = [json.loads(line) for line in run.pairs_file("judge").read_text().splitlines()]
    assert stats["pairs"] == 3 and all(p["meta"]["rule"] == "calibrated" and p["meta"]["chosen_index"] == 3
                                       for p in pairs)  # best vs worst: 3 (best) over 0 (worst)
    off = judge_run(run, JudgeConfig(backend="local", plan="full", calibrate="off"), quiet())
    assert off["calls_made"] == 0 and off["verdicts"]["inconsistent"] == 18  # the same calls, undecided
    assert run.stage_settings("judge")["calibrate"] == "off"  # readers follow the calibration the run last used
    assert all(v["verdict"] == "inconsistent" for v in run_verdicts(run))


def test_api_judges_calibrate_from_scores_per_order_when_asked(run, fp):
    add_samples(run, n=2, k=3)

    def biased(req: dict) -> str:  # the first shown gets 3 points more; the truly better one 1 point more
        body = req["messages"][-1]["content"]
        assert body.endswith(SCORES_SUFFIX)
        first, second = (int(m) for m in QUALITY.findall(body.split("[Response A]", 1)[1])[:2])
        return json.dumps({"reasoning": "first is best", "score_a": 6 + (first > second), "score_b": 3 +
                           (second > first), "verdict": "A"})
    fp.answer = biased
    out = judge_run(run, cfg(fp, plan="full", calibrate="scores"), quiet())
    assert out["consistency_rate"] == 0.0 and out["verdicts"]["b"] == 6 and out["calibrated_pairs"] == 6
    assert fp.calls == 12  # the same calls as without scores: 2 per pair
    assert all(r["scores"] for r in run.read("judgments"))
    assert parse_scores('{"score_a": 7, "score_b": 11}') is None and parse_scores("no json") is None


def test_429_and_500_are_retried_honouring_retry_after(run, fp):
    add_samples(run, n=1, k=2)
    fp.faults.extend([Fault.status(429, retry_after=0.6), Fault.status(500), Fault.status(503)])
    t0 = time.monotonic()
    out = judge_run(run, cfg(fp, concurrency=1, plan="full"), quiet())
    assert time.monotonic() - t0 >= 0.6 and out["calls_made"] == 2 and out["invalid_calls"] == 0
    assert fp.statuses[429] == 1 and fp.statuses[500] == 1 and fp.statuses[503] == 1 and fp.statuses[200] == 2
    assert sorted(r["attempts"] for r in run.read("judgments")) == [1, 4]


def test_unreadable_output_is_retried_once_then_recorded_invalid(run, fp):
    add_samples(run, n=1, k=2)
    fp.faults.extend([Fault.content("I think A."), Fault.garbage_body(), Fault.content("no idea"), Fault.empty()])
    out = judge_run(run, cfg(fp, concurrency=1, plan="full"), quiet())
    recs = run.read("judgments")
    assert fp.calls == 4 and out["invalid_calls"] == 2 and out["verdicts"]["invalid"] == 1
    assert {r["raw"] for r in recs} == {"<html>502 Bad Gateway</html> not json", ""}
    assert judge_run(run, cfg(fp, plan="full"), quiet())["calls_made"] == 0  # invalid is cached...
    assert judge_run(run, cfg(fp, plan="full", retry_invalid=True), quiet())["calls_made"] == 2  # ...unless asked
    assert pair_verdicts(run.read("judgments"))[0]["verdict"] == "b"


@pytest.mark.parametrize("backend", ["groq", "openai"])
def test_json_mode_rejections_are_replies_not_outages(run, fp, backend):
    """Groq answers 400 json_validate_failed when the model's JSON is broken: the run goes on, and the verdict is
    still read when the failed generation states it literally."""
    add_samples(run, n=1, k=3)
    fp.faults.extend([Fault.json_failed('{"reasoning": "Q1Q wins" "verdict": "B"}'), Fault.json_failed("oops"),
                      Fault.json_failed("still oops")])
    out = judge_run(run, cfg(fp, backend, concurrency=1, plan="full"), quiet())
    recs = run.read("judgments")
    assert out["calls_made"] == 6 and fp.calls == 7 and out["invalid_calls"] == 1
    assert recs[0]["position_verdict"] == "B" and recs[1]["raw"] == "still oops"


def test_a_refused_request_is_recorded_invalid_and_the_run_goes_on(run, fp):
    add_samples(run, n=1, k=3)
    fp.faults.append(Fault.status(413))
    out = judge_run(run, cfg(fp, concurrency=1, plan="full"), quiet())
    bad = [r for r in run.read("judgments") if r["verdict"] == "invalid"]
    assert out["calls_made"] == 6 and fp.calls == 6 and len(bad) == 1 and bad[0]["raw"].startswith("HTTP 413")
    fp.faults.extend([Fault.status(400)] * 5)
    with pytest.raises(LabError, match="--no-json-mode"):  # every request refused: a setting is wrong, stop early
        judge_run(run, cfg(fp, concurrency=1, plan="full"), quiet(), template=DEFAULT_TEMPLATE + " ")


def test_a_judge_that_only_writes_garbage_stops_early(run, fp):
    add_samples(run, n=5, k=5)
    fp.answer = lambda req: "Let me think about this step by step"
    with pytest.raises(LabError, match="could not be read as a verdict"):
        judge_run(run, cfg(fp, concurrency=1), quiet())
    assert len(run.read("judgments")) == 5 and fp.calls <= 12  # 5 calls retried once (+1 in flight): no more


# ---- clear errors -------------------------------------------------------------------------------------------------
def test_no_samples_and_single_responses_are_clear_errors(run, fp):
    with pytest.raises(LabError, match="no samples yet"):
        judge_run(run, cfg(fp), quiet())
    add_samples(run, n=2, k=1)
    with pytest.raises(LabError, match="--k 2 or more"):
        judge_run(run, cfg(fp), quiet())
    assert fp.calls == 0


def test_duplicates_are_not_judged_and_lone_instructions_are_skipped(run, fp):
    add_samples(run, n=1, k=3)
    run.append("samples", [{**run.read("samples")[0], "instruction_id": "solo"}])
    dup = {**run.read("samples")[1], "sample_index": 3, "duplicate_of": 1}
    run.append("samples", [dup])
    out = judge_run(run, cfg(fp, plan="full"), quiet())
    assert out["skipped_instructions"] == 1 and fp.calls == 6


def test_missing_key_names_the_variable(run, fp, monkeypatch):
    add_samples(run, n=1, k=2)
    monkeypatch.delenv("GROQ_API_KEY")
    with pytest.raises(LabError, match="GROQ_API_KEY is not set"):
        judge_run(run, cfg(fp), quiet())
    monkeypatch.setenv("MY_KEY", KEY)
    assert judge_run(run, cfg(fp, api_key_env="MY_KEY"), quiet())["calls_made"] == 2
    monkeypatch.delenv("MY_KEY")
    assert judge_run(run, cfg(fp, api_key_env="MY_KEY"), quiet())["calls_made"] == 0  # all cached: no key needed


@pytest.mark.parametrize("fault,message", [
    (lambda fp: setattr(fp, "key", "another-key"), "rejected the API key"),
    (lambda fp: setattr(fp, "models", {"other"}), "answered 404 for model 'judge-model'"),
])
def test_401_and_404_fail_at_once(run, fp, fault, message):
    add_samples(run, n=1, k=2)
    fault(fp)
    with pytest.raises(LabError, match=message) as e:
        judge_run(run, cfg(fp, concurrency=1), quiet())
    assert KEY not in str(e.value) and fp.calls == 1


def test_wrong_base_url_is_a_clear_error(run, fp):
    add_samples(run, n=1, k=2)
    with pytest.raises(LabError, match="answered 404"):
        judge_run(run, cfg(fp, "openai", base_url=fp.url + "/api", api_key_env="OPENAI_API_KEY"), quiet())
    with pytest.raises(LabError, match="Could not connect"):
        judge_run(run, cfg(fp, base_url="http://127.0.0.1:9", api_key_env="GROQ_API_KEY", concurrency=1), quiet())


def test_persistent_429_and_hangs_give_up_with_judgments_kept(run, fp):
    add_samples(run, n=1, k=3)
    judge_run(run, cfg(fp, plan="knockout"), quiet())  # 3 responses: (0,1), then the winner against 2: 4 calls
    fp.faults.extend([Fault.status(429, retry_after=0.05)] * 3)
    with pytest.raises(LabError, match="kept answering 429.*rerun the same command to resume"):
        judge_run(run, cfg(fp, plan="full", max_retries=2, concurrency=1), quiet())
    assert len(run.read("judgments")) == 4 and fp.statuses[429] == 3  # nothing already judged was lost
    fp.faults.append(Fault.hang())
    with pytest.raises(LabError, match="gave no answer in time"):
        judge_run(run, cfg(fp, plan="full", max_retries=0, timeout_s=0.5, concurrency=1), quiet())
    assert judge_run(run, cfg(fp, plan="full"), quiet())["calls_made"] == 2  # the missing pair, once it answers


# ---- concurrency, rate limit, resume, secrets ---------------------------------------------------------------------
def test_calls_run_concurrently_and_the_client_limit_provokes_no_429(run, fp):
    add_samples(run, n=4, k=3)
    fp.latency_s = 0.2
    judge_run(run, cfg(fp, plan="full", concurrency=8), quiet())
    assert fp.max_in_flight >= 4
    fp.reset_counts()
    fp.rate_limit = (5, 1.0)  # the server allows 5 requests in any second
    t0 = time.monotonic()  # the client is set 20% under it: its 3% margin alone is 30 ms a window at this rate,
    # less than a loaded machine's thread jitter (a limit set exactly at the provider's is the user's risk; 10% under
    # still drew a 429 on two cores running the suite on two workers)
    out = judge_run(run, cfg(fp, plan="full", concurrency=8, rpm=240, retry_invalid=False,
                             prompt_file=""), quiet(), template=DEFAULT_TEMPLATE + " ")
    assert out["calls_made"] == 24 and fp.statuses[429] == 0 and time.monotonic() - t0 >= 23 * 0.2


@pytest.mark.slow
def test_a_killed_run_resumes_without_repeating_finished_calls(run, fp):
    add_samples(run, n=6, k=5)
    fp.latency_s = 0.05  # 40 calls a second at concurrency 2: the kill lands with about 100 of them still to make
    env = {**os.environ, "LAB_RUNS_DIR": str(run.path.parent), "GROQ_API_KEY": KEY, "GROQ_BASE_URL": fp.url}
    argv = [sys.executable, "-m", "lab", "judge", "--run", run.name, "--backend", "groq", "--model", "m",
            "--base-url", fp.url, "--rpm", "0", "--concurrency", "2", "--plan", "full"]
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(run.read("judgments")) < 20 and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = run.read("judgments")
    assert 20 <= len(kept) < 120
    sent_before = fp.calls
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert fp.calls - sent_before == 120 - len(kept)  # only the calls that had not finished were made again
    recs = run.read("judgments")
    assert len(recs) == 120 and len({r["cache_key"] for r in recs}) == 120
    assert json.loads(out.stdout)["calls_made"] == 120 - len(kept)


def test_cli_prints_the_plan_and_no_secret_reaches_a_file(run, fp):
    add_samples(run, n=2, k=5)
    env = {**os.environ, "LAB_RUNS_DIR": str(run.path.parent), "GROQ_API_KEY": KEY, "GROQ_BASE_URL": fp.url}
    base = [sys.executable, "-m", "lab", "judge", "--run", run.name, "--backend", "groq", "--base-url", fp.url,
            "--rpm", "0"]
    est = subprocess.run(base + ["--estimate-only"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert est.returncode == 0 and fp.calls == 0
    plan = json.loads(est.stderr.split("plan: ", 1)[1].splitlines()[0])
    assert plan["calls_to_make"] == 16 and plan["model"] == "llama-3.3-70b-versatile"
    assert json.loads(est.stdout)["plan"] == plan  # the summary a script reads holds the estimate too
    done = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["calls_made"] == 16 == fp.calls
    for path in run.path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    assert KEY not in done.stdout + done.stderr
    assert run.stage_settings("judge")["prompt_hash"] == run.read("judgments")[0]["prompt_hash"]
    assert (run.path / "judge-prompt.txt").read_text(encoding="utf-8") == DEFAULT_TEMPLATE
    bad = subprocess.run(base[:-2] + ["--rpm", "0", "--model", "x"], cwd=ROOT,
                         env={**env, "GROQ_API_KEY": ""}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "GROQ_API_KEY is not set" in bad.stderr


# ---- the local judge ----------------------------------------------------------------------------------------------
def test_local_judge_reads_verdicts_from_label_probabilities(run, tiny):
    add_samples(run, n=2, k=3)
    c = JudgeConfig(backend="local", model="tiny-random", reasoning_tokens=8, min_reasoning_tokens=5, batch_size=4)
    out = judge_run(run, c, quiet())
    recs = run.read("judgments")
    assert out["calls_made"] == len(recs) == 8 and out["invalid_calls"] == 0
    for r in recs:
        assert r["verdict"] in ("a", "b", "tie") and abs(sum(r["label_probs"].values()) - 1) < 1e-3
        assert r["confidence"] == max(r["label_probs"].values()) and r["usage"]["completion_tokens"] >= 5
        assert '"verdict"' not in r["raw"]  # raw is what the model wrote: the lab's scaffolding is not in it
        assert not r["raw"].startswith('{"reasoning"') and _json_string_prefix(r["raw"]) == r["reasoning"]
    assert judge_run(run, c, quiet())["calls_made"] == 0


def test_the_local_judge_prefills_its_instructions_once_and_judges_as_a_plain_prefill_would(tiny, monkeypatch):
    """The judge's instructions (the same start in every prompt) run through the model once per batch; the verdicts,
    reasoning and label probabilities are what a pre-fill of every whole prompt gives."""
    from lab import engine_lab
    from lab.judge import DEFAULT_TEMPLATE, render_prompt

    prompts = [render_prompt(DEFAULT_TEMPLATE, f"Question {i}?", f"answer {i}" + "+" * i, f"reply {i}.")
               for i in range(3)]
    backend = LocalBackend("tiny-random", "cpu", "float32", reasoning_tokens=8, batch_size=4, min_reasoning_tokens=5)
    widths = []
    hook = backend.cm.model.register_forward_pre_hook(lambda _m, a, kw: widths.append(tuple(kw["input_ids"].shape)),
                                                      with_kwargs=True)
    shared = backend.judge(prompts)
    first, minimum = widths[0], engine_lab.SHARED_PREFIX_MIN
    monkeypatch.setattr(engine_lab, "SHARED_PREFIX_MIN", 10 ** 9)  # every whole prompt, left-padded
    widths.clear()
    plain = backend.judge(prompts)
    hook.remove()
    assert first[0] == 1 and first[1] >= minimum  # the shared start: one row
    assert widths[0][0] == 3 and widths[0][1] > first[1]  # the plain pre-fill: 3 whole prompts
    for s, p in zip(shared, plain):
        assert (s.raw, s.prompt_tokens, s.completion_tokens) == (p.raw, p.prompt_tokens, p.completion_tokens)
        assert s.probs == pytest.approx(p.probs, abs=1e-4)


@pytest.mark.slow
def test_bundled_local_judge_gives_reasoning_and_verdicts(run):
    texts = ["Paris is the capital of France.", "I like turtles.", "The capital of France is Paris, on the Seine."]
    add_samples(run, n=1, k=3, texts=texts)
    short = ('Instruction: {instruction}\nResponse A: {response_a}\nResponse B: {response_b}\nWhich response is '
             'better? Reply in JSON: {"reasoning": "...", "verdict": "A" or "B" or "tie"}')  # a short prompt: CPU time
    out = judge_run(run, JudgeConfig(backend="local", model="bundled", reasoning_tokens=24), quiet(), template=short)
    recs = run.read("judgments")
    assert out["calls_made"] == 4 and all(r["reasoning"] for r in recs)
    assert out["consistency_rate"] is not None and out["invalid_calls"] == 0


# The bundled 135M judge on the README's recipe sizes (4 instructions x 3 answers): tests/test_readme.py checks
# its calls, pairs and reasoning on the recipe's own run (assert_the_bundled_judge_decided).


def test_a_stop_request_keeps_finished_judgments_and_resumes(run, fp):
    from lab import progress as prog

    add_samples(run, n=4, k=5)
    fp.latency_s = 0.05

    class StopAfter(Progress):
        def update(self, done, total, desc=None, **extra):
            if done >= 5:
                prog.request_stop()  # what the app's SIGTERM does

    try:
        with pytest.raises(prog.Stopped):
            judge_run(run, cfg(fp, plan="full", concurrency=2), StopAfter(quiet=True))
    finally:
        prog._STOP["requested"] = False
    kept = run.read("judgments")
    assert 5 <= len(kept) < 80 and fp.calls == len(kept)  # calls in flight were recorded, none started after
    assert judge_run(run, cfg(fp, plan="full"), quiet())["calls_made"] == 80 - len(kept)


def test_retry_after_forms_and_even_spacing():
    from email.utils import formatdate

    from lab.ratelimit import RateLimiter, backoff_s, retry_after_s

    assert retry_after_s({"retry-after": "2"}) == 2.0 and retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert 8 < retry_after_s({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s(None) is None
    assert backoff_s(3, 1.0, None) == pytest.approx(4.0, rel=0.25) and backoff_s(1, 1.0, 7.5) == 7.5
    limiter = RateLimiter(rpm=600, margin=0.0)  # one start every 0.1 s
    t0 = time.monotonic()
    for _ in range(6):
        limiter.acquire()
    assert 0.45 <= time.monotonic() - t0 < 1.0
    limiter.pause(0.3)  # a Retry-After holds everyone back
    t1 = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - t1 >= 0.25
