"""`python -m lab report`: on a run with sample, judge, rank, pairs, a spot-check, train, compare, notes and two
self-rewarding rounds (tiny-random), every file of runs/<run>/report/ is written and holds the run's own numbers."""
import csv
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cards, compare, efficiency, iterate, rank, report, sample
from lab.compare import CompareConfig
from lab.judge import JudgeConfig, judge_run
from lab.pairs import PairsConfig, build_pairs, record_spotcheck
from lab.progress import Progress
from lab.rank import RankConfig
from lab.records import comparisons
from lab.records.verdicts import run_verdicts
from lab.report import ReportConfig
from lab.sample import SampleConfig
from lab.store import REPORT_FILES, Run
from lab.train import TrainConfig, train_adapter
from tests.fakeprovider import FakeProvider
from tests.test_iterate import small

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-report-test-key"
QUIET = Progress(quiet=True)


def scored_judge(req: dict) -> str:
    """A position-biased API judge with scores: the first response shown always 'wins', its scores favour length."""
    body = req["messages"][-1]["content"]
    a_text = body.split("[Response A]", 1)[1].split("[End of Response A]", 1)[0]
    b_text = body.split("[Response B]", 1)[1].split("[End of Response B]", 1)[0]
    sa, sb = (7, 3) if len(a_text) >= len(b_text) else (5, 6)
    return json.dumps({"reasoning": f"judged {len(a_text)} vs {len(b_text)} characters", "score_a": sa,
                       "score_b": sb, "verdict": "A"})


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_RUNS_DIR", str(tmp_path_factory.mktemp("report") / "runs"))
        mp.setenv("OPENAI_API_KEY", KEY)
        run = Run.open("r")
        sample.run(run, SampleConfig(model="tiny-random", n=3, k=3, max_new_tokens=12), QUIET)
        with FakeProvider(key=KEY, answer=scored_judge) as fp:
            mp.setenv("OPENAI_BASE_URL", fp.url + "/v1")
            judge_run(run, JudgeConfig(backend="openai", model="gpt-4o-mini", base_url=fp.url + "/v1", rpm=0,
                                       plan="full", calibrate="scores"), QUIET)
        rank.run(run, RankConfig(ranker="tiny-random"), QUIET)
        build_pairs(run, PairsConfig(source="judge"))
        build_pairs(run, PairsConfig(source="pairrm"))
        first = run_verdicts(run)[0]
        record_spotcheck(run, first["instruction_id"], first["a"], first["b"], "b")
        tiny = dict(max_steps=2, lora_r=4, batch_size=2, eval_fraction=0.0, gradient_checkpointing=False)
        train_adapter(run, "pairrm", "dpo-pairrm", TrainConfig(**tiny), progress=QUIET)
        compare.compare_run(run, CompareConfig(n=3, max_new_tokens=8, batch_size=4, bootstrap=200,
                                               pairrm="tiny-random"), QUIET)
        grid = comparisons.grid(run)
        compare.save_note(run, "Overall: the adapter writes shorter answers.")
        compare.save_note(run, "base rambles | here", grid.index[0])
        iterate.run(run, small(n=2, eval_n=2, samples=2, evaluations=1), QUIET)
        out = report.run(run, ReportConfig(examples=4), QUIET)
        folder = run.file("report")
        yield run, out, folder, {p.name: p for p in folder.iterdir()}


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that decodes whole and is not blank (lines and text drawn on it)."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    pixels = imread(path)  # every chunk decoded (a truncated or corrupt file raises)
    assert pixels.shape[:2] == struct.unpack(">II", data[16:24])[::-1]
    assert len({tuple(px) for px in pixels.reshape(-1, pixels.shape[-1])[::7]}) > 10
    return struct.unpack(">II", data[16:24])


def test_every_file_is_written_and_the_index_names_each(reported):
    run, out, folder, files = reported
    expected = {REPORT_FILES[k] for k in ("readme", "efficiency", "examples", "judge", "training", "rounds",
                                          "rounds_png", "scores", "grid", "notes")}
    curves = {"curves-dpo-pairrm.png", "curves-iteration-1-round-1.png", "curves-iteration-2-round-2.png"}
    assert expected | curves <= set(files) and set(out["files"]) == set(files)
    readme = files["README.md"].read_text()
    assert all(f"]({name})" in readme for name in files if name != "README.md")
    assert "![training curves of dpo-pairrm](curves-dpo-pairrm.png)" in readme and "](rounds.png)" in readme
    assert "Noise: the answers come from tiny-random" in readme  # the labels come first
    for name in curves | {"rounds.png"}:
        width, height = png_size(files[name])
        assert width >= 400 and height >= 200


def test_efficiency_csv_has_one_row_per_stage_run_with_time_and_memory(reported):
    run, _, _, files = reported
    table = rows(files["efficiency.csv"])
    assert list(table[0])[:6] == ["run", "stage", "name", "status", "wall_s", "cpu_s"] and "peak_rss_gib" in table[0]
    own = [(r["stage"], r["name"]) for r in table if r["run"] == "."]
    assert own[:6] == [("sample", ""), ("judge", ""), ("rank", ""), ("pairs", "judge"), ("pairs", "pairrm"),
                       ("pairs", "judge")]  # the spot-check rebuilt the judge pairs
    assert ("train", "dpo-pairrm") in own and ("compare", "") in own and ("iterate", "") in own
    assert {"iterations/1", "iterations/2"} <= {r["run"] for r in table}
    recorded = efficiency.read(run)
    judge = next(r for r in recorded if r["stage"] == "judge")
    row = next(r for r in table if r["run"] == "." and r["stage"] == "judge")
    assert int(row["api_calls"]) == judge["api_calls"] == 18 and float(row["peak_rss_gib"]) > 0


def test_judge_examples_hold_both_orders_the_calibrated_verdict_and_the_override(reported):
    run, _, _, files = reported
    text = files["judge-examples.md"].read_text()
    first = run_verdicts(run)[0]  # the spot-checked pair comes first
    assert text.count("\n## ") == 4 and f"`{first['instruction_id']}`: #{first['a']} vs #{first['b']}" in \
        text.split("\n## 2.")[0]
    section = text.split("\n## 1.")[1].split("\n## 2.")[0]
    samples = {(s["instruction_id"], s["sample_index"]): s for s in run.read("samples")}
    assert samples[(first["instruction_id"], first["a"])]["prompt"] in section
    assert all(samples[(first["instruction_id"], i)]["text"] in section for i in (first["a"], first["b"]))
    assert f"#{first['a']} first" in section and f"#{first['b']} first" in section
    assert section.count("judged ") == 2  # both orders' reasoning, as the judge wrote it
    assert "calibrated over both orders" in section and "Calibrated grades (mean over both orders): #" in section
    assert f"Human override: #{first['b']}" in section and "PairRM: prefers #" in section


def test_scores_rounds_training_grid_and_notes_are_the_runs_own_numbers(reported):
    run, _, _, files = reported
    scores = json.loads(run.file("compare_scores").read_text())
    table = rows(files["scores.csv"])
    row = next(r for r in table if r["model"] == "dpo-pairrm" and r["scorer"] == "pairrm")
    w = scores["win_rates"]["dpo-pairrm"]["pairrm"]
    assert float(row["win_rate"]) == pytest.approx(w["win_rate"], abs=1e-4)
    assert float(row["lc_win_rate"]) == pytest.approx(w["lc_win_rate"], abs=1e-4) and int(row["n"]) == 3
    assert "not AlpacaEval's number" in files["README.md"].read_text()  # next to the LC figure, what it is not
    rounds = rows(files["rounds.csv"])
    lines = iterate.lineage(run)
    assert [int(r["round"]) for r in rounds] == [1, 2]
    vs_previous = lines[1]["eval"]["win_rate_vs_previous"]
    assert float(rounds[1]["win_rate_vs_previous"]) == pytest.approx(vs_previous["win_rate"])
    assert float(rounds[1]["ci_low_vs_previous"]) == pytest.approx(vs_previous["ci_low"])
    assert rounds[0]["win_rate_vs_previous"] == "" and float(rounds[0]["chars_mean"]) == pytest.approx(
        lines[0]["chars_mean"])
    assert float(rounds[0]["loss"]) == pytest.approx(lines[0]["train"]["final"]["train/loss"])
    training = {r["adapter"]: r for r in rows(files["training.csv"])}
    assert set(training) == {"dpo-pairrm", "iteration-1-round-1", "iteration-2-round-2"}
    assert training["dpo-pairrm"]["steps"] == "2" and training["dpo-pairrm"]["status"] == "done"
    assert files["comparison.md"].read_text() == cards.markdown_table(comparisons.grid(run))
    notes = files["notes.md"].read_text()
    assert "Overall: the adapter writes shorter answers." in notes and "base rambles | here" in notes


def test_the_cli_writes_the_report_and_refuses_a_run_with_nothing_in_it(reported, runs_dir):
    run, _, folder, _ = reported
    env = {"LAB_RUNS_DIR": str(run.path.parent), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lab", "report", "--run", "r", "--examples", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["folder"] == str(folder)
    assert (folder / "judge-examples.md").read_text().count("\n## ") == 2  # rewritten whole
    Run.open("empty").path.mkdir(parents=True)
    env["LAB_RUNS_DIR"] = str(runs_dir)
    bad = subprocess.run([sys.executable, "-m", "lab", "report", "--run", "empty"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nothing to report yet" in bad.stderr
    assert not (runs_dir / "empty" / "report").exists()
