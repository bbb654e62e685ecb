"""A hosted app against a visitor who abuses it (a security review's findings after issue 9): the owner's Hub token
used for any model, a made-up config that costs the server minutes or GBs, a flooded queue, endless jobs, settings
that exhaust memory or an API bill, a squatted shared run name, one typed key sent to two providers, server paths
shown on the page, exports Gradio would not serve."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest

from lab import hosting, jobs, limits
from lab.cli import main
from lab.errors import LabError
from lab.judge_backends import TYPED_KEY_ENV, resolve_key
from lab.store import Run
from tests.test_queue import long_job, prompts, quick_job, wait_running  # noqa: F401 (fixture)

OWNER_TOKEN = "hf_" + "owner" + "0123456789abcdefghij"


@pytest.fixture
def hosted(monkeypatch):
    monkeypatch.setenv("LAB_HOSTED", "1")
    for name in limits.HF_TOKEN_ENV + (limits.TOKEN_MODELS_ENV, "LAB_SHARED_RUNS"):
        monkeypatch.delenv(name, raising=False)
    limits._OWNER_TOKEN.clear()
    yield
    limits._OWNER_TOKEN.clear()


# ---- the owner's Hub token -------------------------------------------------------------------------------------------
def test_the_owners_hub_token_leaves_the_environment_and_serves_listed_models_only(hosted, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login to fall back on
    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    monkeypatch.setenv(limits.TOKEN_MODELS_ENV, "meta-llama/Llama-3.2-1B-Instruct")
    limits.seal_owner_token()
    assert "HF_TOKEN" not in os.environ and huggingface_hub.get_token() is None  # downloads here are anonymous
    assert limits.owner_token(["meta-llama/Llama-3.2-1B-Instruct"]) == OWNER_TOKEN
    assert limits.owner_token(["owner/private-model"]) is None  # a repo the owner did not list
    assert limits.owner_token(["meta-llama/Llama-3.2-1B-Instruct", "owner/private-model"]) is None
    assert limits.owner_token(["tiny-random"]) is None  # nothing from the Hub: no token needed


def test_a_visitors_job_gets_no_owner_token(runs_dir, hosted, monkeypatch, tmp_path):
    """The job's real environment (/proc/<pid>/environ) holds no HF_TOKEN when its model is not a listed one."""
    from lab.ui.common import start_job
    from lab.ui.visitors import current_visitor  # noqa: F401 (outside a request: no visitor, no address)

    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    limits.seal_owner_token()
    run = Run.open("visitor-run")
    run.path.mkdir(parents=True)
    src = tmp_path / "p.txt"
    src.write_text("\n".join(f"Say {i}." for i in range(8)))
    monkeypatch.setattr(hosting, "check_source", lambda *a, **k: None)  # a file outside uploads/, for the test only
    start_job("visitor-run", "sample", ["--model", "tiny-random", "--instructions", str(src), "--n", "8", "--k", "1",
                                        "--max-new-tokens", "32", "--batch-size", "1"], "Sampling")
    try:
        pid = json.loads(run.job_file("job").read_text())["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert OWNER_TOKEN.encode() not in environ and b"HF_TOKEN=" not in environ
    finally:
        jobs.stop(run, grace_s=30)


# ---- a made-up config ----------------------------------------------------------------------------------------------
def test_a_made_up_config_costs_no_memory_and_absurd_sizes_are_refused(tmp_path):
    from transformers import GPTNeoConfig, LlamaConfig

    GPTNeoConfig(vocab_size=64, hidden_size=8, num_layers=2, attention_types=[[["global"], 2]], num_heads=2,
                 max_position_embeddings=200_000).save_pretrained(tmp_path / "neo")  # a 40 GB mask buffer per layer
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time()
    assert limits.count_parameters(str(tmp_path / "neo")) < 2_000_000
    assert time.time() - t0 < 10 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB
    LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1_000_000, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(tmp_path / "deep")
    t0 = time.time()
    with pytest.raises(LabError, match="num_hidden_layers=1000000: past 512, the lab does not size it"):
        limits.count_parameters(str(tmp_path / "deep"))
    assert time.time() - t0 < 5  # refused before anything is built


# ---- the queue -----------------------------------------------------------------------------------------------------
def test_one_job_per_visitor_two_per_address_and_a_full_queue(runs_dir, hosted, prompts, monkeypatch):  # noqa: F811
    head, *rest = (Run.open(n) for n in ("head", "b", "c", "d", "e", "f"))
    for r in rest:
        r.path.mkdir(parents=True)
    long_job(head, prompts)
    try:
        quick_job(rest[0], who="alice", where="net-1")
        with pytest.raises(LabError, match="You already have a job waiting or running"):
            quick_job(rest[1], who="alice", where="net-2")
        quick_job(rest[1], who="bob", where="net-1")
        with pytest.raises(LabError, match="Two jobs from your network"):
            quick_job(rest[2], who="carol", where="net-1")  # a fresh browser id from the same address
        monkeypatch.setenv("LAB_MAX_QUEUE", "3")
        with pytest.raises(LabError, match=r"queue is full \(3 jobs waiting or running; the owner sets LAB_MAX_QUEUE"):
            quick_job(rest[2], who="dave", where="net-3")
    finally:
        jobs.stop(head, grace_s=30)


def test_a_job_past_the_time_limit_is_stopped(runs_dir, prompts, monkeypatch):  # noqa: F811
    """The owner's LAB_MAX_JOB_MINUTES (set here directly; a hosted app has a default) ends a job that runs on."""
    head = Run.open("head")
    long_job(head, prompts)
    wait_running(head)
    monkeypatch.setenv("LAB_MAX_JOB_MINUTES", "0.01")  # 0.6 s
    st = jobs.wait(head, timeout_s=120)
    assert st["state"] in ("stopped", "died") and st["state"] != "done", st


# ---- settings that cost memory or money ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["train", "--pairs", "judge", "--adapter", "a", "--lora-r", "100000"], "--lora-r 100000 is above this app's cap "
                                                                            "of 64 LoRA rank"),
    (["train", "--pairs", "judge", "--adapter", "a", "--batch-size", "32", "--grad-accum", "8"],
     "--batch-size 32 x --grad-accum 8 = 256 is above this app's cap of 64"),
    (["train", "--pairs", "judge", "--adapter", "a", "--max-length", "32768"], "cap of 2048 tokens of training"),
    (["rank", "--ranker", "tiny-random", "--batch-size", "100000"], "--batch-size 100000 is above this app's cap"),
    (["judge", "--backend", "openai", "--rpm", "0"], "1-60 requests per minute and at most 8 at once"),
    (["judge", "--backend", "openai", "--concurrency", "64"], "1-60 requests per minute and at most 8 at once"),
    (["sample", "--model", "tiny-random", "--n", "8", "--batch-size", "512"], "--batch-size 512 is above"),
])
def test_settings_that_exhaust_memory_or_a_bill_are_refused(run, hosted, argv, message, capsys):
    run.pairs_file("judge").parent.mkdir(parents=True, exist_ok=True)
    run.pairs_file("judge").write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "No."}) + "\n")
    run.append("samples", [{"instruction_id": "i", "sample_index": j, "prompt": "Hi?", "text": t, "model": "m",
                            "duplicate_of": None} for j, t in enumerate(["a", "b"])])
    assert main([argv[0], "--run", "t", *argv[1:]]) == 2
    assert message in capsys.readouterr().err


def test_a_run_cannot_grow_past_its_instruction_cap_nor_a_plan_past_its_calls(run, hosted, monkeypatch, capsys):
    run.append("instructions", [{"id": f"old-{i}", "prompt": f"Old {i}?", "source": "x"} for i in range(60)])
    assert main(["sample", "--run", "t", "--model", "tiny-random", "--n", "8"]) == 2
    assert "this run would hold 68 instructions, which is above this app's cap of 64" in capsys.readouterr().err
    run.append("samples", [{"instruction_id": f"old-{i}", "sample_index": j, "prompt": f"Old {i}?", "text": f"{i}-{j}",
                            "model": "m", "duplicate_of": None} for i in range(30) for j in range(8)])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-owner-0123456789")
    assert main(["judge", "--run", "t", "--backend", "openai", "--plan", "full"]) == 2  # 30 x 56 calls
    assert "the plan's 1680 calls still to make is above this app's cap of 400" in capsys.readouterr().err
    assert main(["rank", "--run", "t", "--ranker", "tiny-random"]) == 2  # 30 x 56 comparisons
    assert "ranking 1680 response pairs is above this app's cap of 600" in capsys.readouterr().err


def test_typed_text_is_capped(run, hosted):
    from lab.compare import save_note

    with pytest.raises(LabError, match=r"The note of \d+ KB is above this app's cap of 20 KB"):
        save_note(run, "x" * 30_000)
    assert not run.file("notes").exists()


# ---- names, keys, paths, exports -------------------------------------------------------------------------------------
def test_a_shared_run_name_cannot_be_squatted(runs_dir, hosted, monkeypatch):
    monkeypatch.setenv("LAB_SHARED_RUNS", "demo")
    alice = hosting.Visitor.of(browser_id="a" * 32)
    assert hosting.access("demo", alice) == "none" and not hosting.claim("demo", alice)
    assert not (runs_dir / "demo").exists()
    assert hosting.access("mine", alice) == "new"


def test_a_key_typed_for_one_provider_goes_to_that_provider_only(monkeypatch):
    for name in ("GROQ_API_KEY", "OPENAI_API_KEY", *TYPED_KEY_ENV.values()):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(TYPED_KEY_ENV["groq"], "gsk-visitor-0123456789")
    assert resolve_key("groq", "")[0] == "gsk-visitor-0123456789"
    with pytest.raises(LabError, match="OPENAI_API_KEY is not set"):
        resolve_key("openai", "")  # the visitor's Groq key is not an OpenAI key


def test_the_page_shows_no_server_path(runs_dir, hosted):
    from lab.models import cache_dir

    text = f"{runs_dir / 't' / 'pairs-judge.jsonl'}: line 1 ... {cache_dir()}/bundled ... {Path.home()}/x"
    shown = hosting.public_text(text)
    assert str(runs_dir) not in shown and str(Path.home()) not in shown and "runs/t/pairs-judge.jsonl" in shown


def test_an_export_is_served_from_a_temp_copy(run):
    import tempfile

    from lab import compare
    from lab.ui.compare import export_grid

    run.record_stage("compare", {"key": "k", "instruction_ids": ["i"], "models": ["base"]})
    run.append("compare", [{"instruction_id": "i", "prompt": "Hi?", "model": "base", "text": "Hello", "key": "k",
                            "duplicate": None}])
    served = Path(export_grid("t", "csv"))
    assert Path(tempfile.gettempdir()) in served.parents and served.read_text() == compare.export(run, "csv").read_text()


# ---- files the server would fetch ------------------------------------------------------------------------------------
URL_FILE = {"path": "https://example.com/ten-gigabytes.bin", "meta": {"_type": "gradio.FileData"}}


def test_no_input_of_the_app_makes_the_server_fetch_a_url(tmp_path):
    """Gradio moves every FileData in every event input into the component's cache before a handler runs, fetching
    a URL path (a Textbox's value or the chat history as well as a file box's): after build_app none is fetched."""
    import asyncio

    import gradio as gr
    from gradio import processing_utils

    from lab.ui import build_app
    from lab.ui.common import URL_FILE_REFUSED

    app = build_app()
    inputs = {b._id: b for fn in app.fns.values() for b in fn.inputs}
    kinds = {type(b).__name__ for b in inputs.values()}
    assert {"File", "Chatbot", "Textbox", "Dropdown", "Number"} <= kinds, kinds
    for block in inputs.values():
        with pytest.raises(gr.Error) as refused:  # what Gradio runs on an input's value before any handler
            asyncio.run(processing_utils.async_move_files_to_cache(URL_FILE, block, check_in_upload_folder=True))
        assert refused.value.message == URL_FILE_REFUSED, type(block).__name__
    upload = next(b for b in inputs.values() if isinstance(b, gr.File))
    with pytest.raises(gr.Error):
        upload.move_resource_to_block_cache("http://example.com/x.csv")
    local = tmp_path / "mine.jsonl"
    local.write_text('{"prompt": "Say hi."}\n')
    assert Path(upload.move_resource_to_block_cache(str(local))).read_text() == local.read_text()  # a file passes


def test_a_url_sent_as_a_stream_is_not_fetched_and_the_upload_step_refuses_it(run):
    import asyncio

    import gradio as gr
    from gradio import processing_utils

    from lab.ui.common import URL_FILE_REFUSED, refuse_url_files, upload_into

    refuse_url_files()
    stream = {**URL_FILE, "is_stream": True}  # Gradio leaves a stream's path as it is: the handler gets the URL
    value = asyncio.run(processing_utils.async_move_files_to_cache(stream, gr.File(), check_in_upload_folder=True))
    assert value["path"] == URL_FILE["path"]
    with pytest.raises(gr.Error) as refused:
        with upload_into(run, value["path"]):
            pass
    assert refused.value.message == URL_FILE_REFUSED and not run.upload_path(".bin", "instructions").exists()


def test_the_running_app_answers_a_url_for_a_file_with_what_to_do(runs_dir):
    from gradio_client import Client, handle_file

    from lab.ui import build_app, launch_kwargs
    from lab.ui.common import URL_FILE_REFUSED

    app = build_app()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
    try:
        client = Client(app.local_url, verbose=False)
        url = handle_file(URL_FILE["path"])
        for args in (("url-file", "tiny-random", "file", url), (url, "tiny-random", "bundled", None)):  # file, run
            with pytest.raises(Exception) as refused:
                client.predict(*args, 2, 2, 0.8, 0.95, 8, 0, 4, "", api_name="/start_sampling")
            assert URL_FILE_REFUSED in str(refused.value)
    finally:
        app.close()
    assert not Run.open("url-file").path.exists()


# ---- a visitor's job environment -------------------------------------------------------------------------------------
def test_a_visitors_job_inherits_an_allow_list_not_the_owners_other_secrets(runs_dir, hosted, prompts,  # noqa: F811
                                                                             monkeypatch):
    """The job's real environment (/proc/<pid>/environ): the owner's other secrets (a W&B key, the Space's OAuth
    secret, the browser-id key, anything new) stay out; the caps and the owner's provider key for the app's own
    judge reach it; huggingface_hub is told not to send a saved login."""
    owner_secrets = {"WANDB_API_KEY": "wandb-owner-0123456789", "OAUTH_CLIENT_SECRET": "oauth-owner-0123456789",
                     "LAB_BROWSER_SECRET": "browser-owner-0123456789", "OWNER_DATABASE_URL": "postgres://owner@db"}
    for name, value in owner_secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GROQ_API_KEY", "gsk-owner-0123456789")
    monkeypatch.setenv("LAB_MAX_N", "40")
    head = Run.open("head")
    long_job(head, prompts)
    try:
        wait_running(head)
        pid = json.loads(head.job_file("job").read_text())["pid"]
        environ = dict(line.split("=", 1) for line in
                       Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in line)
        assert not set(owner_secrets) & set(environ)
        assert not any(v in environ.values() for v in owner_secrets.values())
        assert environ["LAB_MAX_N"] == "40" and environ["LAB_HOSTED"] == "1" and environ["GROQ_API_KEY"]
        assert environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"
    finally:
        jobs.stop(head, grace_s=30)
    typed = jobs.job_env({TYPED_KEY_ENV["groq"]: "gsk-visitor-0123456789"})
    assert "GROQ_API_KEY" not in typed and typed[TYPED_KEY_ENV["groq"]] == "gsk-visitor-0123456789"
    handed = jobs.job_env({"HF_TOKEN": OWNER_TOKEN})  # a model the owner lists in LAB_TOKEN_MODELS
    assert handed["HF_TOKEN"] == OWNER_TOKEN and "HF_HUB_DISABLE_IMPLICIT_TOKEN" not in handed


def test_a_visitors_job_never_sends_the_owners_saved_hub_login(hosted, monkeypatch, tmp_path):
    """The owner ran `hf auth login` on the host (a token file under HF_HOME): a visitor job's huggingface_hub
    sends no Authorization header with it."""
    import subprocess
    import sys

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text(OWNER_TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    probe = "from huggingface_hub.utils import build_hf_headers; print(build_hf_headers().get('authorization'))"
    out = subprocess.run([sys.executable, "-c", probe], env=jobs.job_env(None), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "None", out
    own = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ), capture_output=True, text=True)
    assert OWNER_TOKEN in own.stdout  # the same probe in the owner's environment would have sent it


# ---- the requester's address, runs per visitor -----------------------------------------------------------------------
def test_the_address_is_the_one_the_owners_proxies_saw_never_a_hop_the_client_wrote(monkeypatch):
    monkeypatch.delenv("LAB_PROXY_HOPS", raising=False)
    monkeypatch.setenv("SPACE_ID", "owner/lab")  # a Space: the Hub's proxy adds the address it saw, on the right
    assert hosting.client_address("6.6.6.6, 1.2.3.4", "10.0.0.9") == "1.2.3.4"
    assert hosting.client_address(None, "10.0.0.9") == "10.0.0.9"
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("LAB_HOSTED", "1")  # no proxy said: the header is anyone's to send, the connection counts
    assert hosting.client_address("6.6.6.6", "10.0.0.9") == "10.0.0.9"
    monkeypatch.setenv("LAB_PROXY_HOPS", "2")  # a load balancer, then nginx
    assert hosting.client_address("6.6.6.6, 1.2.3.4, 10.0.0.2", "10.0.0.3") == "1.2.3.4"
    monkeypatch.setenv("LAB_PROXY_HOPS", "one")
    with pytest.raises(LabError, match=r"LAB_PROXY_HOPS='one': the owner sets it to how many proxies"):
        hosting.client_address("1.2.3.4", "10.0.0.9")


def test_a_visitor_and_an_address_start_a_capped_number_of_runs(runs_dir, hosted, monkeypatch):
    monkeypatch.setenv("LAB_MAX_RUNS", "2")
    alice, bob, carol = (hosting.Visitor.of(browser_id=c * 32) for c in "abc")
    assert hosting.claim("a1", alice, "net-1") and hosting.claim("a2", alice, "net-1")
    with pytest.raises(LabError, match=r"You have started 2 runs on this app in the last 24 hours, its cap \(the "
                                       r"owner sets LAB_MAX_RUNS\): pick one of your runs"):
        hosting.claim("a3", alice, "net-2")
    assert not (runs_dir / "a3").exists() and hosting.claim("a1", alice, "net-1")  # an own run is not a new one
    assert hosting.claim("b1", bob, "net-1") and hosting.claim("b2", bob, "net-1")
    with pytest.raises(LabError, match="Your network has started 4 runs"):  # fresh browser ids, one address
        hosting.claim("c1", carol, "net-1")
    old = time.time() - 25 * 3600
    for name in ("a1", "a2"):
        os.utime(runs_dir / name / "owner.json", (old, old))
    assert hosting.claim("a3", alice, "net-1")  # a day later


@pytest.fixture(scope="module")
def hosted_app(tmp_path_factory):
    """`python app.py` with LAB_HOSTED=1 on a plain host (no proxy in front: LAB_PROXY_HOPS unset)."""
    from tests.browser_helpers import AppServer

    runs = tmp_path_factory.mktemp("hosted") / "runs"
    runs.mkdir()
    server = AppServer(runs, env={"LAB_HOSTED": "1", "SPACE_ID": "", "SYSTEM": "", "HF_HUB_OFFLINE": "1"})
    yield server, runs
    server.close()


@pytest.mark.slow
def test_a_client_cannot_fill_the_queue_by_sending_a_new_forwarded_address_each_time(hosted_app):
    """12 of 14 jobs were accepted when each request carried another X-Forwarded-For."""
    from gradio_client import Client

    from tests.test_visitors import refused, sample_args

    server, runs = hosted_app
    clients = [Client(server.url, verbose=False, headers={"X-Forwarded-For": f"203.0.113.{i + 1}"}) for i in range(3)]
    for client in clients:
        client.predict(None, None, api_name="/arrive")
    clients[0].predict(*sample_args("xff-0", n=32, tokens=128, batch=1), api_name="/start_sampling")
    try:
        assert "queued" in clients[1].predict(*sample_args("xff-1"), api_name="/start_sampling")
        assert "Two jobs from your network" in refused(clients[2], *sample_args("xff-2"), api_name="/start_sampling")
    finally:
        for i in (1, 0):
            clients[i].predict(f"xff-{i}", api_name="/stop_sample")


# ---- inputs measured after decoding, before work ---------------------------------------------------------------------
def test_a_small_compressed_table_is_measured_after_decoding_before_it_is_read(hosted, tmp_path):
    """A 1 KB zstd parquet held one 20 MB prompt; a 7 KB one two million rows: both read whole before (0.6 -> 1.5 GB
    of the app's memory for 200 MB, 52 s for 5M rows). Now the parquet's metadata refuses them, and an Arrow file's
    batches are counted as they are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lab.instructions import load_instructions

    pq.write_table(pa.table({"prompt": ["x" * (20 << 20)]}), tmp_path / "one.parquet", compression="zstd")
    pq.write_table(pa.table({"prompt": ["Hi there"] * 2_000_000}), tmp_path / "rows.parquet", compression="zstd")
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as f, pa.ipc.new_file(
            f, pa.schema([("prompt", pa.string())]), options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(pa.table({"prompt": ["Hi there"] * 200_000}), max_chunksize=5_000)
    assert (tmp_path / "one.parquet").stat().st_size < 5_000 and (tmp_path / "rows.parquet").stat().st_size < 20_000
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time()
    with pytest.raises(LabError, match=r"one.parquet holds 20 MB once decompressed, above this app's cap of 5 MB per "
                                       r"uploaded file \(the owner sets LAB_MAX_UPLOAD_MB\)"):
        load_instructions(str(tmp_path / "one.parquet"))
    with pytest.raises(LabError, match=r"rows.parquet holds 2,000,000 rows, which is above this app's cap of 10000 "
                                       r"rows per instruction file \(the owner sets LAB_MAX_UPLOAD_ROWS\)"):
        load_instructions(str(tmp_path / "rows.parquet"))
    with pytest.raises(LabError, match=r"rows.arrow holds 15,000 rows, which is above this app's cap of 10000"):
        load_instructions(str(tmp_path / "rows.arrow"))  # refused at the batch that passes the cap
    assert time.time() - t0 < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KB


def test_the_longest_instruction_and_the_lines_of_a_text_file_are_capped(hosted, tmp_path):
    from lab.instructions import load_instructions

    (tmp_path / "long.txt").write_text("Short one.\n" + "Tell me " + "very " * 2000 + "much.\n")
    with pytest.raises(LabError, match=r"long.txt: an instruction of 10 KB \('Tell me very very.*is above this app's "
                                       r"cap of 8 KB per instruction \(the owner sets LAB_MAX_INSTRUCTION_KB\)"):
        load_instructions(str(tmp_path / "long.txt"))
    (tmp_path / "lines.txt").write_text("\n".join(f"Say {i}." for i in range(10_001)))
    with pytest.raises(LabError, match=r"lines.txt holds 10,001 rows, which is above this app's cap of 10000"):
        load_instructions(str(tmp_path / "lines.txt"))


def test_deeply_nested_json_is_a_message_not_a_traceback(lab_run_for_cli, tmp_path, capsys):
    """A RecursionError traceback on the command line before; Gradio's generic "Error" in the app."""
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert main(["sample", "--run", "t", "--model", "tiny-random", "--instructions", str(deep), "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "deep.jsonl: line 1 nests lists or objects more than 32 levels deep" in err and "Traceback" not in err
    (tmp_path / "forty.jsonl").write_text('{"prompt": "Hi?", "x": ' + "[" * 40 + "]" * 40 + "}\n")
    assert main(["sample", "--run", "t", "--model", "tiny-random", "--instructions", str(tmp_path / "forty.jsonl"),
                 "--n", "1"]) == 2  # past the lab's 32 levels, well before Python's own limit
    assert "forty.jsonl: line 1 nests lists or objects more than 32 levels deep" in capsys.readouterr().err


@pytest.fixture
def lab_run_for_cli(runs_dir):
    return Run.open("t")


def test_an_upload_is_read_apart_bounded_and_named_as_the_user_knows_it(run, tmp_path):
    """The app reads an upload in a child process stopped past a time or memory bound; an empty upload's refusal
    named the server's copy ("instructions.txt")."""
    import gradio as gr

    from lab.instructions import check_apart
    from lab.ui.common import upload_into

    empty = tmp_path / "my-list.txt"
    empty.write_text("\n  \n")
    with pytest.raises(gr.Error) as e:
        with upload_into(run, str(empty)):
            pass
    assert "my-list.txt: no instructions found" in e.value.message and "instructions.txt" not in e.value.message
    assert not run.upload_path(".txt", "instructions").exists()  # nothing kept
    good = tmp_path / "good.txt"
    good.write_text("One?\nTwo?\n")
    assert check_apart(good, "good.txt") == 2
    with pytest.raises(LabError, match=r"^good.txt took more than 0.01 s to read on this app: upload a smaller"):
        check_apart(good, "good.txt", seconds=0.01)
    with pytest.raises(LabError, match=r"^good.txt took more than 1 MB of memory to read on this app"):
        check_apart(good, "good.txt", mb=1)


def test_a_visitors_bomb_upload_is_refused_quickly_and_stalls_no_other_page(hosted_app, tmp_path):
    """A 19.6 KB parquet of 5M rows took 52 s to check in the web process, while /config took up to 24 s."""
    import threading
    import urllib.request

    import pyarrow as pa
    import pyarrow.parquet as pq
    from gradio_client import Client, handle_file

    from tests.test_visitors import refused, sample_args

    server, runs = hosted_app
    bomb = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"prompt": ["Hi there"] * 5_000_000}), bomb, compression="zstd")
    client = Client(server.url, verbose=False)
    client.predict(None, None, api_name="/arrive")
    args = list(sample_args("bomb"))
    args[2:4] = ["file", handle_file(str(bomb))]
    waits: list[float] = []

    def browse() -> None:
        for _ in range(5):
            t0 = time.time()
            urllib.request.urlopen(server.url + "/config", timeout=30).read()
            waits.append(time.time() - t0)

    other = threading.Thread(target=browse)
    t0 = time.time()
    other.start()
    message = refused(client, *args, api_name="/start_sampling")
    other.join()
    assert "bomb.parquet holds 5,000,000 rows, which is above this app's cap of 10000" in message
    assert time.time() - t0 < 15 and max(waits) < 5, waits
    assert not list(runs.glob("bomb/uploads/*"))


# ---- chat: measured before tokenizing --------------------------------------------------------------------------------
def test_a_chat_message_and_its_history_are_measured_before_any_tokenizing(hosted):
    from lab.chat import measured_history

    turn = lambda role, kb: {"role": role, "content": [{"type": "text", "text": "y" * (kb * 1024)}]}  # noqa: E731
    with pytest.raises(LabError, match=r"The message of 30 KB is above this app's cap of 20 KB of typed text \(the "
                                       r"owner sets LAB_MAX_TEXT_KB\)"):
        measured_history([], "x" * 30 * 1024)
    with pytest.raises(LabError, match=r"The conversation of 81 KB is above this app's cap of 64 KB of conversation "
                                       r"\(the owner sets LAB_MAX_CHAT_KB\)"):
        measured_history([turn("user", 10), turn("assistant", 10)] * 4, "x" * 1024)
    with pytest.raises(LabError, match=r"The chat history holds more than 400 messages, the most a chat keeps: clear"):
        measured_history([{"role": "user"}] * 40_000, "Hi")
    assert measured_history([turn("user", 1), {"role": "tool", "content": "x"}, "junk"], "Hi") == [
        {"role": "user", "content": "y" * 1024}]


def test_the_app_refuses_a_huge_chat_at_once_and_logs_a_malformed_history_once(hosted_app):
    """A 4 MB message held another visitor's "hi" for 6 s; a malformed 40k-message history logged ~120k lines."""
    from gradio_client import Client

    from tests.test_visitors import refused

    server, _ = hosted_app
    client = Client(server.url, verbose=False)
    client.predict(None, None, api_name="/arrive")
    settings = ("tiny-random", "", 0.0, 1.0, 8, 0)
    t0 = time.time()
    assert "The message of 4096 KB is above this app's cap of 20 KB" in refused(
        client, "", "base", "", "x" * (4 << 20), [], [], *settings, api_name="/chat")
    assert time.time() - t0 < 10
    lines = len(server.log_text().splitlines())
    malformed = [{"role": "user", "content": 5, "metadata": "?"}] * 40_000
    assert "The chat history holds more than 400 messages" in refused(client, "", "base", "", "Hi", malformed, [],
                                                                      *settings, api_name="/chat")
    left = client.predict("", "base", "", "Hi", [{"rôle": "user"}] * 300, [], *settings, api_name="/chat")[0]
    assert left[-1]["role"] == "assistant" and len(left) == 2  # answered; the 300 entries were left out
    log = server.log_text().splitlines()[lines:]
    assert len(log) < 100, log[:100]  # the refusal's one traceback; 120,000 lines before
    assert sum("left out 300 of 300 history entries" in line for line in log) == 1


# ---- paths, temp folders, markup, pickles, settings refused up front -------------------------------------------------
def test_the_redo_command_and_its_settings_file_show_no_server_path(runs_dir, hosted):
    from lab.ui.common import redo_updates

    upload = runs_dir / "t" / "uploads" / "judge-prompt.txt"
    st = {"state": "done", "argv": ["judge", "--run", "t", "--backend", "openai", "--prompt-file", str(upload)]}
    _, command, yaml_file = redo_updates(st)
    text = Path(yaml_file).read_text()
    assert str(runs_dir) not in command and str(runs_dir) not in text
    assert "--prompt-file runs/t/uploads/judge-prompt.txt" in command and "runs/t/uploads/judge-prompt.txt" in text


def test_writing_the_report_again_leaves_no_temp_folder_behind(run, monkeypatch, tmp_path):
    import tempfile

    from lab.ui.share import make_report

    served = tmp_path / "tmp"
    served.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(served))
    run.append("samples", [{"instruction_id": "i", "sample_index": j, "prompt": "Hi?", "text": t, "model": "m",
                            "duplicate_of": None} for j, t in enumerate(["a", "b"])])
    first = make_report("t", 0)[1]
    for _ in range(3):
        again = make_report("t", 0)[1]
    assert again == first and all(Path(p).is_file() for p in again)
    assert [p.name for p in served.iterdir()] == ["preference-lab-served"]
    assert len(list((served / "preference-lab-served").iterdir())) == 1  # one folder for this run's report
    assert not list(served.glob("lab-report-*"))


def test_markup_in_the_comparison_grid_is_shown_as_text(run):
    from lab import compare

    evil = "Say <img src=x onerror=alert(1)> | <script>alert(2)</script>"
    run.record_stage("compare", {"key": "k", "instruction_ids": ["i"], "models": ["base"]})
    run.append("compare", [{"instruction_id": "i", "prompt": evil, "model": "base", "text": "<b>bold</b>\nline 2",
                            "key": "k", "duplicate": None}])
    table = compare.export(run, "md").read_text()
    assert "<img" not in table and "<script>" not in table and "<b>" not in table
    assert "&lt;img src=x onerror=alert(1)&gt; \\| &lt;script&gt;" in table
    assert "&lt;b&gt;bold&lt;/b&gt;<br>line 2" in table


def test_a_pickle_adapter_is_a_clear_error_not_a_traceback(run, capsys):
    import torch

    folder = run.adapter_dir("pickled")
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    torch.save({"lora": torch.zeros(2)}, folder / "adapter_model.bin")
    assert main(["chat", "--run", "t", "--adapter", "pickled", "--model", "tiny-random", "--message", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "Adapter 'pickled' holds adapter_model.bin, a pickle file, which the lab does not load" in err
    assert "Traceback" not in err


def test_kto_with_one_row_a_batch_is_refused_before_anything_loads(run, capsys):
    run.pairs_file("judge").parent.mkdir(parents=True, exist_ok=True)
    run.pairs_file("judge").write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "No."}) + "\n")
    t0 = time.time()
    assert main(["train", "--run", "t", "--pairs", "judge", "--adapter", "k", "--method", "kto", "--model",
                 "tiny-random", "--batch-size", "1", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--method kto needs --batch-size 2 or more (got 1): KTO estimates its KL term" in err
    assert "Traceback" not in err and time.time() - t0 < 10 and not run.adapter_dir("k").exists()


def test_the_hosted_push_refusal_reads_as_written():
    from lab.hub import _HOSTED_PUSH
    from lab.ui.wording import page_text

    shown = page_text(f"Sign in with Hugging Face (the button on the Share tab) to push: {_HOSTED_PUSH}")
    assert "the lab pushes with your own account" in shown and "the the" not in shown and "Pushes tab" not in shown
    assert page_text("run `python -m lab pairs --run x` first") == "run the PairRM tab first"
