"""Inputs and records: a user's files in any encoding state, ids, pairs roles, non-finite numbers, LoRA layer names,
settings recorded only once a stage did work, a provider asking for a day's pause, iterate's settings checked first,
adapter and Hub names. Every bad input: one line, exit 2 (CLI), and the run's files byte-identical."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import config as lab_config
from lab import progress as lab_progress
from lab.cli import build_parser, parse_args
from lab.records.pairs import load_pairs
from lab.stages import STAGES
from lab.compare import CompareConfig, check_scorers
from lab.hub import PushConfig
from lab.iterate import IterateConfig
from lab.judge import JudgeConfig
from lab.sample import SampleConfig
from lab.train import TrainConfig
from lab.errors import LabError
from lab.instructions import read_file
from lab.judge import DEFAULT_TEMPLATE, judge_run, load_template
from lab.progress import Progress, Stopped
from lab.store import read_jsonl
from lab.train import precheck, train_adapter
from tests.fakeprovider import Fault, FakeProvider, json_verdict
from tests.test_judge import KEY, add_samples, prefer_higher

ROOT = Path(__file__).resolve().parent.parent
BOM = b"\xef\xbb\xbf"
TINY = dict(model="tiny-random", batch_size=2, lr=1e-3, gradient_checkpointing=False, eval_fraction=0.0, max_steps=1)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path: to show that a refused input changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(rc: int, err: str) -> str:
    """The CLI's answer to bad input: exit 2, no traceback, and the message as one line, the last thing printed
    (progress bars of model loading may come before it)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, (rc, err)
    return errors[0]


def cli_error(capsys, *argv: str) -> str:
    """Run `python -m lab ARGV` in-process and return its one error line."""
    from lab.cli import main

    rc = main(list(argv))
    return one_error_line(rc, capsys.readouterr().err)


def pair(n: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Question {n}: what is {n} plus {n}?"}],
            "chosen": [{"role": "assistant", "content": f"Certainly! {n} plus {n} is {2 * n}."}],
            "rejected": [{"role": "assistant", "content": f"{n} plus {n} is {2 * n}."}],
            "meta": {"instruction_id": f"q{n}"}}


def jsonl(rows: list[dict], final_newline: bool = True) -> str:
    text = "\n".join(json.dumps(r) for r in rows)
    return text + "\n" if final_newline else text


@pytest.fixture
def lab_run(run):
    """A run with what the stages leave: samples, a judge prompt, run.json, a pairs file."""
    add_samples(run, n=2, k=3)
    run.record_stage("sample", {"model": "tiny-random", "k": 3})
    (run.path / "judge-prompt.txt").write_text(DEFAULT_TEMPLATE, encoding="utf-8")
    run.pairs_file("judge").write_text(jsonl([pair(n) for n in range(4)]), encoding="utf-8")
    run.append("instructions", [{"id": f"i{n}", "prompt": f"Question {n}?", "source": "test"} for n in range(2)])
    return run


# ---- encodings ------------------------------------------------------------------------------------------------------
def test_files_that_are_not_utf8_are_refused_naming_the_byte_and_line(tmp_path, run):
    latin1 = "first prompt\ncaf\xe9 au lait\n".encode("latin-1")  # the 0xe9 is byte 16, on line 2
    cases = {"latin1.txt": latin1, "latin1.jsonl": b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n',
             "latin1.csv": b"prompt\nok\ncaf\xe9\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LabError, match=r"not UTF-8 text \(byte \d+, on line \d, is 0xe9\): save it as UTF-8"):
            read_file(tmp_path / name)
    with pytest.raises(LabError, match=r"byte 16, on line 2"):
        read_file(tmp_path / "latin1.txt")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(LabError, match=r"image.txt is not UTF-8 text \(byte 0, on line 1"):
        read_file(tmp_path / "image.txt")
    (tmp_path / "zeros.txt").write_bytes(b"plain\nthen\x00\x00binary")
    with pytest.raises(LabError, match="holds a NUL byte on line 2: it is a binary file"):
        read_file(tmp_path / "zeros.txt")
    (tmp_path / "utf16.txt").write_bytes("one prompt\n".encode("utf-16"))
    with pytest.raises(LabError, match="is UTF-16 text, not UTF-8"):
        read_file(tmp_path / "utf16.txt")
    (tmp_path / "prompt.txt").write_bytes(b"{instruction} {response_a} {response_b} \xff")
    with pytest.raises(LabError, match=r"Prompt file .*prompt.txt is not UTF-8 text \(byte 40, on line 1"):
        load_template(str(tmp_path / "prompt.txt"))
    (tmp_path / "pairs.jsonl").write_bytes(jsonl([pair(1)]).encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(LabError, match=r"Pairs file .*pairs.jsonl is not UTF-8 text \(byte \d+, on line 2"):
        load_pairs(tmp_path / "pairs.jsonl")


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    (tmp_path / "bom.txt").write_bytes(BOM + b"First prompt\r\nSecond prompt\r\n")
    (tmp_path / "bom.csv").write_bytes(BOM + b"prompt,topic\r\nFirst prompt,x\r\n")
    (tmp_path / "bom.jsonl").write_bytes(BOM + b'{"prompt": "First prompt"}\n')
    assert [i.prompt for i in read_file(tmp_path / "bom.txt")] == ["First prompt", "Second prompt"]
    assert [i.prompt for i in read_file(tmp_path / "bom.csv")] == ["First prompt"]
    assert [i.prompt for i in read_file(tmp_path / "bom.jsonl")] == ["First prompt"]
    assert read_file(tmp_path / "bom.txt")[0].id == read_file(tmp_path / "bom.jsonl")[0].id  # no U+FEFF in the id
    (tmp_path / "prompt.txt").write_bytes(BOM + DEFAULT_TEMPLATE.replace("\n", "\r\n").encode())
    assert load_template(str(tmp_path / "prompt.txt")) == DEFAULT_TEMPLATE  # same text, same prompt hash
    (tmp_path / "pairs.jsonl").write_bytes(BOM + jsonl([pair(1), pair(2)]).encode())
    assert len(load_pairs(tmp_path / "pairs.jsonl")) == 2


def test_an_unterminated_csv_quote_is_reported_with_its_line(tmp_path):
    (tmp_path / "open.csv").write_text('prompt\nFirst prompt\n"Second, with a comma\nThird\nFourth\n')
    with pytest.raises(LabError, match="the quoted field that starts on line 3 is never closed"):
        read_file(tmp_path / "open.csv")
    (tmp_path / "stray.csv").write_text('prompt\n"quoted" then more\n')
    with pytest.raises(LabError, match="line 2 is not valid CSV"):
        read_file(tmp_path / "stray.csv")
    (tmp_path / "multi.csv").write_text('prompt\n"Line one\nline two, still one prompt"\nNext\n')
    assert [i.prompt for i in read_file(tmp_path / "multi.csv")] == ["Line one\nline two, still one prompt", "Next"]


# ---- ids ------------------------------------------------------------------------------------------------------------
def test_two_prompts_with_one_id_are_refused_naming_both_lines(tmp_path):
    rows = [{"id": 1, "prompt": "What is DPO?"}, {"id": 2, "prompt": "Name a prime."},
            {"id": "1", "prompt": "Explain LoRA."}]
    (tmp_path / "dup.jsonl").write_text(jsonl(rows))
    with pytest.raises(LabError, match="lines 1 and 3 have the same id '1' but different prompts"):
        read_file(tmp_path / "dup.jsonl")
    (tmp_path / "same.jsonl").write_text(jsonl([rows[0], {"id": "1", "prompt": " What is DPO? "}]))
    assert [(i.id, i.prompt) for i in read_file(tmp_path / "same.jsonl")] == [("1", "What is DPO?")]
    (tmp_path / "badid.jsonl").write_text(jsonl([{"id": {"n": 1}, "prompt": "x"}]))
    with pytest.raises(LabError, match='line 1 has "id"'):
        read_file(tmp_path / "badid.jsonl")


def test_an_id_the_run_holds_for_another_prompt_is_refused(lab_run, tmp_path):
    (tmp_path / "new.jsonl").write_text(jsonl([{"id": "i0", "prompt": "A different question"}]))
    before = snapshot(lab_run.path)
    with pytest.raises(LabError, match="Instruction id 'i0' .* names another prompt"):
        from lab import sample

        sample.run(lab_run, SampleConfig(model="tiny-random", instructions=str(tmp_path / "new.jsonl"), n=1, k=1))
    assert snapshot(lab_run.path) == before


# ---- pairs files ----------------------------------------------------------------------------------------------------
def test_the_last_pair_of_a_users_file_counts_without_a_newline(run, tmp_path):
    six = tmp_path / "six.jsonl"
    six.write_text(jsonl([pair(n) for n in range(6)], final_newline=False))
    assert len(load_pairs(six)) == 6
    assert precheck(run, str(six), "a", TrainConfig(**TINY))["n"] == 6
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(pair(1)))
    assert len(load_pairs(one)) == 1
    own = tmp_path / "samples.jsonl"  # the lab's own append-only files keep the torn-line rule
    own.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2')
    assert read_jsonl(own) == [{"a": 1}]


def test_chosen_and_rejected_must_be_assistant_messages(tmp_path):
    good = pair(1)
    cases = {"user chosen": {**good, "chosen": [{"role": "user", "content": "I am the user."}]},
             "user rejected": {**good, "rejected": [{"role": "user", "content": "Me too."}]},
             "ends on a user turn": {**good, "chosen": good["chosen"] + [{"role": "user", "content": "And?"}]},
             "system answer": {**good, "rejected": [{"role": "system", "content": "Be brief."}]}}
    for what, row in cases.items():
        path = tmp_path / "p.jsonl"
        path.write_text(jsonl([good, row]))
        with pytest.raises(LabError, match=r"pairs line 2, (chosen|rejected): every message must have role "
                                           r"'assistant'"):
            load_pairs(path)
    two_turns = {**good, "prompt": good["prompt"] + good["chosen"] + [{"role": "user", "content": "And 3?"}]}
    (tmp_path / "ok.jsonl").write_text(jsonl([good, two_turns]))
    assert len(load_pairs(tmp_path / "ok.jsonl")) == 2  # earlier turns belong in the prompt, and are fine there


# ---- numbers --------------------------------------------------------------------------------------------------------
def settings_classes() -> list[type]:
    """Every stage's settings dataclass (the CLI's stage table lists them all)."""

    classes = [stage.settings for stage in STAGES]
    assert all(issubclass(c, lab_config.Settings) and dataclasses.is_dataclass(c) for c in classes)
    return classes


def test_every_float_setting_of_every_stage_refuses_nan_and_infinity():
    checked = 0
    for cls in settings_classes():
        for f in dataclasses.fields(cls):
            if not isinstance(f.default, float):
                continue
            for bad in (float("nan"), float("inf"), float("-inf")):
                flag = "--" + f.name.replace("_", "-")
                with pytest.raises(LabError, match=f"{flag} must be a finite number"):
                    cls(**{f.name: bad}).validate()
                checked += 1
    assert checked >= 3 * 20  # temperature, top_p, rpm, lr, beta, margin... of every stage
    assert SampleConfig(temperature=0.5).validate().temperature == 0.5


def test_non_finite_flags_on_the_command_line_change_nothing(lab_run, capsys):
    before = snapshot(lab_run.path)
    assert "--temperature must be a finite number (got nan)" in cli_error(
        capsys, "judge", "--run", "t", "--backend", "groq", "--temperature", "nan")
    assert "--rpm must be a finite number (got nan)" in cli_error(capsys, "judge", "--run", "t", "--rpm", "nan")
    assert "--temperature must be a finite number (got inf)" in cli_error(
        capsys, "sample", "--run", "t", "--model", "tiny-random", "--n", "1", "--k", "1", "--max-new-tokens", "2",
        "--temperature", "inf")
    assert "--lr must be a finite number" in cli_error(capsys, "train", "--run", "t", "--pairs", "judge",
                                                       "--adapter", "a", "--lr", "inf")
    assert snapshot(lab_run.path) == before
    assert "Infinity" not in (lab_run.path / "run.json").read_text()


# ---- LoRA layers ----------------------------------------------------------------------------------------------------
def test_unknown_target_modules_are_refused_with_the_models_layer_names(lab_run, capsys):
    before = snapshot(lab_run.path)
    msg = cli_error(capsys, "train", "--run", "t", "--pairs", "judge", "--adapter", "a", "--model", "tiny-random",
                    "--max-steps", "1", "--target-modules", "q_proj,nonexistent")
    assert "--target-modules nonexistent: no such layer in tiny-random can take LoRA" in msg
    assert "q_proj" in msg.split("from:")[1] and "down_proj" in msg.split("from:")[1]
    assert snapshot(lab_run.path) == before  # no adapter folder, no training.json left at "training"
    with pytest.raises(LabError, match="--target-modules is empty"):
        TrainConfig(target_modules=" , ").validate()
    out = train_adapter(lab_run, "judge", "qv", TrainConfig(**TINY, target_modules="q_proj, v_proj"))
    assert set(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == {"q_proj", "v_proj"}


# ---- settings recorded once work is done --------------------------------------------------------------------------
def judge_cfg(fp: FakeProvider, **kw) -> JudgeConfig:
    return JudgeConfig(**{"backend": "groq", "model": "judge-model", "base_url": fp.url, "rpm": 0.0,
                          "api_key_env": "GROQ_API_KEY",  # named: the owner's explicit choice may go to any URL
                          "concurrency": 2, "timeout_s": 5.0, "max_retries": 1, "backoff_s": 0.05, **kw})


def test_a_rejudge_that_fails_at_its_first_call_leaves_prompt_and_settings(run, tmp_path, monkeypatch):
    add_samples(run, n=2, k=3)
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    stricter = tmp_path / "stricter.txt"
    stricter.write_text(DEFAULT_TEMPLATE + "\nJudge strictly.", encoding="utf-8")
    with FakeProvider(key=KEY, answer=prefer_higher) as fp:
        judge_run(run, judge_cfg(fp), Progress(quiet=True))
        before = snapshot(run.path)
        monkeypatch.setenv("GROQ_API_KEY", "sk-a-key-the-provider-does-not-know")
        with pytest.raises(LabError, match="rejected the API key"):
            judge_run(run, judge_cfg(fp, prompt_file=str(stricter)), Progress(quiet=True))
        assert snapshot(run.path) == before  # judge-prompt.txt and run.json still match every judgment
        monkeypatch.setenv("GROQ_API_KEY", KEY)
        judge_run(run, judge_cfg(fp, prompt_file=str(stricter)), Progress(quiet=True))
    assert (run.path / "judge-prompt.txt").read_text(encoding="utf-8") == stricter.read_text(encoding="utf-8")
    assert run.stage_settings("judge")["prompt_hash"] == run.read("judgments")[-1]["prompt_hash"]


@pytest.fixture
def stop_now(monkeypatch):
    """A stop requested before the stage starts: it raises Stopped at its first safe point, before any record."""
    monkeypatch.setitem(lab_progress._STOP, "requested", True)


def test_a_sample_stopped_before_its_first_batch_records_nothing(lab_run, stop_now, tmp_path):
    from lab import sample

    (tmp_path / "more.txt").write_text("A brand new instruction\n")
    before = snapshot(lab_run.path)
    with pytest.raises(Stopped):
        sample.run(lab_run, SampleConfig(model="tiny-random", instructions=str(tmp_path / "more.txt"), k=2,
                                         max_new_tokens=2), Progress(quiet=True))
    assert snapshot(lab_run.path) == before


def test_a_rank_stopped_before_its_first_batch_records_nothing(run, stop_now):
    from lab.rank import RankConfig
    from lab import rank
    from tests.prefdata import write_samples

    write_samples(run, {"i1": ("Say hello.", ["Hello!", "Hi there."])})
    before = snapshot(run.path)
    with pytest.raises(Stopped):
        rank.run(run, RankConfig(ranker="tiny-random", device="cpu"))
    assert snapshot(run.path) == before


def test_a_compare_stopped_before_its_first_completion_records_nothing(run, stop_now, tmp_path):
    from lab.compare import compare_run
    from lab.compare import CompareConfig
    from tests.test_compare import heldout_file, make_adapter, write_training

    write_training(run, ["Explain why the sky is blue."])
    make_adapter(run, "a1")
    before = snapshot(run.path)
    with pytest.raises(Stopped):
        compare_run(run, CompareConfig(instructions=heldout_file(tmp_path, ["Name a colour."]), max_new_tokens=2,
                                       bootstrap=100), Progress(quiet=True))
    assert snapshot(run.path) == before


def test_an_iterate_stopped_before_round_1_samples_records_nothing(run, stop_now):
    from lab import iterate

    run.record_stage("sample", {"model": "tiny-random"})
    run.append("instructions", [{"id": "t0", "prompt": "Say hi.", "source": "test"}])
    before = snapshot(run.path)
    with pytest.raises(Stopped):
        iterate.run(run, IterateConfig(rounds=1, samples=2, max_new_tokens=2, eval_n=0), Progress(quiet=True))
    assert snapshot(run.path) == before


# ---- a provider that asks for a day -------------------------------------------------------------------------------
def test_a_retry_after_of_a_day_stops_the_judge_and_says_so(run, runs_dir):
    add_samples(run, n=2, k=3)
    with FakeProvider(key=KEY) as fp:
        fp.faults.extend([Fault.content(json_verdict("A")), Fault.content(json_verdict("B")),
                          Fault.status(429, retry_after=86400)])
        env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir), "GROQ_API_KEY": KEY}
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "lab", "judge", "--run", "t", "--backend", "groq", "--model", "m",
                              "--base-url", fp.url, "--api-key-env", "GROQ_API_KEY", "--rpm", "0",
                              "--concurrency", "1", "--backoff-s", "0.05"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        calls = fp.calls
    last = one_error_line(res.returncode, res.stderr)
    assert last.startswith("error: groq at ") and "asked to wait 86400 s" in last and "24.0 hours" in last
    assert "more than the 300 s this run waits" in last and "rerun the same command" in last
    assert time.monotonic() - t0 < 60 and calls == 3  # stopped at once: no retry of the refused call, no others
    assert len(run.read("judgments")) == 2  # what was judged before it is saved


def test_the_retry_after_cap_is_a_judge_setting():
    assert JudgeConfig().max_retry_after_s == 300.0
    with pytest.raises(LabError, match="--max-retry-after-s must be > 0"):
        JudgeConfig(max_retry_after_s=0).validate()


# ---- iterate checks every setting first ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw,message", [({"lr": -1.0}, "--lr must be > 0"), ({"beta": 0.0}, "--beta must be > 0"),
                                        ({"lr": 1000.0}, "--lr 1000 is far above .* at most 0.01"),
                                        ({"lora_r": 0}, "--lora-r must be at least 1"),
                                        ({"train_batch_size": 0}, "--train-batch-size must be at least 1"),
                                        ({"epochs": 0.0, "max_steps": -1}, "Give --epochs > 0 or --max-steps > 0"),
                                        ({"rpm": -1.0}, "--rpm 0"), ({"judge_temperature": float("nan")}, "finite")])
def test_iterate_settings_are_all_checked_before_any_work(kw, message):
    with pytest.raises(LabError, match=message):
        IterateConfig(**kw).validate()


def test_iterate_with_a_bad_learning_rate_changes_nothing(lab_run, capsys):
    before = snapshot(lab_run.path)
    assert "--lr must be > 0 (got -1.0)" in cli_error(capsys, "iterate", "--run", "t", "--lr", "-1", "--samples", "2",
                                                      "--max-new-tokens", "2", "--eval-n", "0", "--rounds", "1")
    assert "--beta must be > 0" in cli_error(capsys, "iterate", "--run", "t", "--beta", "0")
    assert snapshot(lab_run.path) == before


# ---- names ----------------------------------------------------------------------------------------------------------
def test_an_invalid_adapter_name_is_called_an_adapter_name(lab_run, capsys):
    before = snapshot(lab_run.path)
    msg = cli_error(capsys, "train", "--run", "t", "--pairs", "judge", "--adapter", "../escape")
    assert "Invalid adapter name '../escape'" in msg and "run name" not in msg
    with pytest.raises(LabError, match="Invalid adapter name"):
        precheck(lab_run, "judge", "a/b", TrainConfig(**TINY))
    with pytest.raises(LabError, match="Invalid pair source name"):
        lab_run.pairs_file("../x")
    assert snapshot(lab_run.path) == before


@pytest.mark.parametrize("bad", ["a--b", "a..b", "a.git", "-a", "a-", "a b", "x" * 97])
def test_namespace_and_prefix_follow_the_one_hub_name_rule(bad, lab_run, capsys):
    from lab.hub import check_repo_name

    for flag in ("namespace", "prefix"):
        with pytest.raises(LabError, match=f"--{flag} .* is not a valid Hub name"):
            PushConfig(**{flag: bad}).validate()
    with pytest.raises(LabError, match="not a valid Hub repo name"):
        check_repo_name(bad)
    before = snapshot(lab_run.path)
    assert "is not a valid Hub name" in cli_error(capsys, "push", "--run", "t", "--dry-run", f"--namespace={bad}")
    assert snapshot(lab_run.path) == before


def test_good_hub_names_pass():
    assert PushConfig(namespace="alice-lab", prefix="my_run.v2").validate().namespace == "alice-lab"


# ---- the CLI on bad files -------------------------------------------------------------------------------------------
def test_bad_files_on_the_command_line_change_nothing(lab_run, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02\xff")
    (tmp_path / "pairs.jsonl").write_bytes(b"\xff\xfe{")
    before = snapshot(lab_run.path)
    assert "save it as UTF-8" in cli_error(capsys, "sample", "--run", "t", "--model", "tiny-random",
                                           "--instructions", str(tmp_path / "latin1.txt"))
    assert "save it as UTF-8" in cli_error(capsys, "judge", "--run", "t", "--prompt-file", str(tmp_path / "binary.txt"))
    assert "is UTF-16 text" in cli_error(capsys, "train", "--run", "t", "--pairs", str(tmp_path / "pairs.jsonl"),
                                         "--adapter", "a")
    assert snapshot(lab_run.path) == before


# ---- every command's --help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [s.name for s in STAGES] + ["doctor"])
def test_every_commands_help_prints_each_default_once(name, capsys):
    """argparse formats help strings with %: a '~25% of a step' once crashed `lab train --help` with a TypeError."""
    with pytest.raises(SystemExit) as end:
        build_parser().parse_args([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert end.value.code == 0 and "usage: python -m lab " + name in text
    assert "(default: the model this run sampled with) (default:" not in text and ") (default: )" not in text
    if name == "train":
        assert "~25% of a step" in text and "(default: on)" in text  # a percent sign and a switch's default


@pytest.mark.parametrize("argv,offline", [(["judge", "--backend", "groq"], "--backend local"),
                                          (["iterate", "--judge", "groq"], "--judge self"),
                                          (["score", "--judge", "groq"], "--judge self"),
                                          (["compare", "--judge", "groq"], "--judge local"),
                                          (["compare", "--score", "groq"], "--score base")])
def test_a_missing_key_names_the_offline_choice_of_that_command(argv, offline, lab_run, capsys, monkeypatch):
    """The way out must be a flag the command has: compare and iterate were told to use --backend local."""
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    if argv[0] == "compare":  # its key check, without the adapters a compare needs first
        with pytest.raises(LabError) as err:
            check_scorers(CompareConfig(**{argv[1].strip("-"): argv[2]}), None)
        msg = str(err.value)
    else:
        msg = cli_error(capsys, argv[0], "--run", lab_run.name, *argv[1:])
    assert "GROQ_API_KEY is not set" in msg and f"({offline}: offline, weak)" in msg, msg
    flag, value = offline.split()
    build_parser().parse_args([argv[0], "--run", "x", flag, value])  # a choice the command takes (else SystemExit)


def test_a_misspelt_flag_is_an_error_of_its_command_with_the_flag_it_was_meant_to_be(capsys):
    with pytest.raises(SystemExit) as end:
        parse_args(["sample", "--run", "m", "--instuctions", "bundled"])
    err = capsys.readouterr().err
    assert end.value.code == 2 and "usage: python -m lab sample" in err
    assert "unrecognized arguments: --instuctions bundled (--instuctions: did you mean --instructions?)" in err
    with pytest.raises(SystemExit):
        parse_args(["sample", "--run", "m", "--instuctions", "a.txt", "--modle", "x"])  # each hint beside its flag
    assert "(--instuctions: did you mean --instructions?; --modle: did you mean --model?)" in capsys.readouterr().err


def test_a_command_run_in_process_leaves_the_signal_handlers_and_the_stop_flag_as_it_found_them(lab_run, capsys):
    """The tests (and any caller) run lab.cli.main in-process: its polite Ctrl-C must not outlive the command."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    lab_progress.request_stop()
    assert "has no PairRM rankings" in cli_error(capsys, "pairs", "--run", lab_run.name, "--source", "pairrm")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not lab_progress.stop_requested()
    with lab_progress.stop_signals(ctrl_c=False):  # a chat: Ctrl-C stays what it was, SIGTERM is polite
        assert signal.getsignal(signal.SIGINT) == before[0] and signal.getsignal(signal.SIGTERM) is lab_progress._polite
