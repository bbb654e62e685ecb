"""A hosted app (lab.hosting, lab.ui.visitors): each visitor reaches only their own runs and the ones the owner
shares (read-only), inputs never name server files, and several visitors' jobs queue. The last tests start the real
app with a Space's variables and drive it as separate API clients, each its own visitor."""
from __future__ import annotations

import json
import time

import gradio as gr
import pytest

from lab import hosting, jobs
from lab.cli import main
from lab.errors import LabError
from lab.hosting import Visitor
from lab.store import Run, read_only
from tests.test_limits import big_config, hub_config

SPACE = {"SYSTEM": "spaces", "SPACE_ID": "owner/preference-lab", "OAUTH_CLIENT_ID": "client-id",
         "OAUTH_CLIENT_SECRET": "client-secret", "OAUTH_SCOPES": "openid profile contribute-repos",
         "OPENID_PROVIDER_URL": "https://huggingface.co"}
ALICE, BOB = Visitor.of(browser_id="a" * 32), Visitor.of(browser_id="b" * 32)
PAIR = {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "No."}]}


@pytest.fixture
def space(monkeypatch):
    for k, v in SPACE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LAB_SHARED_RUNS", raising=False)


# ---- whose runs -----------------------------------------------------------------------------------------------------
def test_a_visitor_reaches_their_runs_and_the_shared_ones_only(runs_dir, space, monkeypatch):
    assert hosting.claim("mine", ALICE) and not hosting.claim("mine", BOB)  # one name, one owner
    Run.open("demo").path.mkdir(parents=True)  # the owner's, made on the command line: no owner.json
    owner = json.loads(Run.open("mine").file("owner").read_text())
    assert set(owner) == {"owner", "created", "where"} and "a" * 32 not in owner["owner"]  # a hash, never the id
    assert [hosting.access("mine", v) for v in (ALICE, BOB, None)] == ["own", "none", "none"]
    assert hosting.access("demo", BOB) == "none" and hosting.visible_runs(BOB) == []
    monkeypatch.setenv("LAB_SHARED_RUNS", "demo, nonsense/../x")
    assert hosting.access("demo", BOB) == "shared" and hosting.visible_runs(BOB) == ["demo"]
    assert hosting.visible_runs(ALICE) == ["demo", "mine"]
    assert hosting.access("fresh", BOB) == "new" and hosting.access("/etc", BOB) == "none"
    signed_in = Visitor.of(hf_user="alice", browser_id="a" * 32)  # signing in keeps the runs of this browser
    assert hosting.access("mine", signed_in) == "own" and signed_in.primary == hosting.visitor_key("hf", "alice")


def test_a_claim_that_nothing_used_is_undone(runs_dir, space):
    hosting.claim("tried", ALICE)
    hosting.release_if_empty("tried")
    assert not Run.open("tried").path.exists()
    hosting.claim("used", ALICE)
    Run.open("used").append("notes", [{"x": 1}])
    hosting.release_if_empty("used")
    assert Run.open("used").path.exists()


def test_a_read_only_run_refuses_every_write(run, tmp_path):
    run.append("samples", [{"a": 1}])
    src = tmp_path / "i.txt"
    src.write_text("Hi\n")
    with read_only(run.path):
        assert run.read("samples") == [{"a": 1}]  # reading is fine
        for write in (lambda: run.append("samples", [{"a": 2}]), lambda: run.record_stage("sample", {}),
                      lambda: run.save_upload(src), lambda: jobs.start(run, ["pairs", "--run", "t"], "x"),
                      lambda: jobs.stop(run)):
            with pytest.raises(LabError, match="shared read-only"):
                write()
    assert run.read("samples") == [{"a": 1}] and not run.jobs_dir.exists()


# ---- inputs that name server files ----------------------------------------------------------------------------------
def train_form() -> list:
    from lab.ui import train as tab

    form = dict(zip(tab.FORM, [1.0, 2.0, 1e-3, 0.1, 2.0, ["sigmoid"], "tiny-random", "all-linear", 8.0, 16.0,
                                      0.0, 1.0, 256.0, 0.1, 0.0, 50.0, 0.0, False, False, True]))
    return list(form.values())


def test_the_pairs_box_takes_only_the_runs_pair_sets(run, space):
    """It used to read any server path: /etc/passwd gave "line 1 is not valid JSON"."""
    from lab.ui.train import start_training

    run.file("samples").parent.mkdir(parents=True, exist_ok=True)
    run.pairs_file("judge").write_text(json.dumps(PAIR) + "\n")
    for path in ("/etc/passwd", "../../etc/passwd", str(run.pairs_file("judge"))):
        with pytest.raises(gr.Error, match=r"one of this run's pair sets \(judge\); files on the server") as e:
            start_training("t", path, "dpo-1", "", *train_form())
        assert "JSON" not in str(e.value)
    with pytest.raises(gr.Error, match="“Continue from adapter” '/tmp': on this hosted app pick adapters of this run"):
        start_training("t", "judge", "dpo-1", "/tmp", *train_form())
    assert not run.jobs_dir.exists()


def test_a_click_runs_the_admit_check_once(run, space, monkeypatch):
    """The Train, Merge, Compare and Judge tabs check a hosted app's rules themselves (a refusal shows before their
    own work); start_job takes that check for the same command line instead of making it again, and checks any
    other command line itself."""
    from lab.ui import common
    from lab.ui.train import start_training

    calls = []
    real = hosting.admit
    monkeypatch.setattr(hosting, "admit", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(jobs, "start", lambda *a, **k: {"state": "running"})
    run.file("samples").parent.mkdir(parents=True, exist_ok=True)
    run.pairs_file("judge").write_text(json.dumps(PAIR) + "\n")
    start_training("t", "judge", "dpo-1", "", *train_form())
    assert calls == ["train"]
    ok = common.admit(["train", "--run", "t", "--pairs", "judge"])
    common.start_job("t", "train", ["--pairs", "judge", "--adapter", "other"], "x", admitted=ok)
    assert calls == ["train", "train", "train"]  # another command line than the one admitted: checked again


def test_models_instructions_and_adapters_are_never_server_paths(runs_dir, space, tmp_path, capsys):
    big_config(tmp_path / "folder")
    cases = [(["sample", "--run", "r", "--n", "8", "--model", str(tmp_path / "folder")], "folders on the server"),
             (["sample", "--run", "r", "--n", "8", "--model", "tiny-random", "--instructions", "/etc/passwd"],
              "files on the server are off limits"),
             (["compare", "--run", "r", "--adapters", "/tmp/x", "--model", "tiny-random"], "pick adapters of this run"),
             (["rank", "--run", "r", "--ranker", str(tmp_path)], "the ranker is one of llm-blender/PairRM, tiny-random"),
             (["judge", "--run", "r", "--prompt-file", "/etc/passwd"], "the judge prompt is the one edited")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (runs_dir / "r").exists()


# ---- the real app, with a Space's variables -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`python app.py` as a Space runs it: OAuth variables, the owner's shared run 'demo', a 405B model's config in
    the Hub cache (no weights), and default caps."""
    from tests.browser_helpers import AppServer

    root = tmp_path_factory.mktemp("space")
    runs = root / "runs"
    (runs / "demo").mkdir(parents=True)
    hub_config(root / "hub", "big-org/huge-llama")
    env = {**SPACE, "LAB_SHARED_RUNS": "demo", "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1"}
    server = AppServer(runs, env=env)
    yield server, runs
    server.close()


def visitor(url: str, arrive: bool = True):
    """An API client with its own session; `arrive` runs the page's load event, which makes it a visitor."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    if arrive:
        client.vid, picker = client.predict(None, None, api_name="/arrive")
        client.runs = [c[1] if isinstance(c, (list, tuple)) else c for c in picker["choices"]]
    return client


def sample_args(run: str, n: int = 2, k: int = 1, tokens: int = 8, model: str = "tiny-random", batch: int = 4):
    return (run, model, "bundled", None, n, k, 0.8, 0.95, tokens, 0, batch, "")  # "": the column found by name


def refused(client, *args, api_name: str) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(*args, api_name=api_name)
    return str(e.value)


def job_status(client, run: str) -> str:
    return client.predict(run, api_name="/job_sample")[1]


def wait_until(predicate, timeout_s: float = 180):
    deadline = time.time() + timeout_s
    while not (value := predicate()):
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)
    return value


@pytest.mark.slow
def test_a_second_visitors_job_queues_behind_the_first_and_runs_after_it(app):
    """Bob's job used to be refused ("Another job is running on this machine (run 'alice-run')")."""
    server, runs = app
    alice, bob = visitor(server.url), visitor(server.url)
    assert alice.predict(*sample_args("alice-run", n=32, tokens=128, batch=1), api_name="/start_sampling")
    text = bob.predict(*sample_args("bob-run"), api_name="/start_sampling")
    assert "queued: 2nd in line, 1 job ahead" in text and "alice" not in text  # a count, never another's run
    assert "queued: 2nd in line, 1 job ahead" in job_status(bob, "bob-run")
    wait_until(lambda: "is running" in job_status(alice, "alice-run"))
    assert "stopped" in alice.predict("alice-run", api_name="/stop_sample")
    wait_until(lambda: "finished" in job_status(bob, "bob-run"))
    started = json.loads((runs / "bob-run" / "jobs" / "job.json").read_text())["started"]
    assert started >= (runs / "alice-run" / "jobs" / "exit.json").stat().st_mtime - 0.01  # after Alice's ended
    assert len(Run(runs / "bob-run").read("samples")) == 2
    assert "**2** responses" in bob.predict("bob-run", None, api_name="/sample_results")[0]


@pytest.mark.slow
def test_a_visitor_cannot_list_read_stop_or_write_another_visitors_run(app):
    server, runs = app
    alice, bob, stranger = visitor(server.url), visitor(server.url), visitor(server.url, arrive=False)
    alice.predict(*sample_args("private", n=32, tokens=128, batch=1), api_name="/start_sampling")
    wait_until(lambda: "is running" in job_status(alice, "private"))
    try:
        assert "private" not in visitor(server.url).runs and "demo" in bob.runs  # the shared run is listed
        assert "private" not in str(bob.predict(api_name="/runs"))
        assert "private" in str(alice.predict(api_name="/runs"))
        for client, no in ((bob, "No such run 'private'"), (stranger, "still loading")):  # stranger: never arrived
            assert no in refused(client, "private", api_name="/stop_sample")
            assert no in refused(client, "private", "pwned", api_name="/save_overall_note")
            assert no in refused(client, *sample_args("private"), api_name="/start_sampling")
            assert "is running" not in str(client.predict("private", api_name="/job_sample"))  # reads: nothing
            assert "responses" not in str(client.predict("private", None, api_name="/sample_results"))
        assert "is running" in job_status(alice, "private")  # still running: nobody else stopped it
        assert not (runs / "private" / "notes.json").exists()
        assert "No samples in this run yet" in bob.predict("demo", None, api_name="/sample_results")[0]  # shared: readable
        assert "shared read-only" in refused(bob, "demo", "pwned", api_name="/save_overall_note")
        assert "shared read-only" in refused(bob, *sample_args("demo"), api_name="/start_sampling")
        assert sorted(p.name for p in (runs / "demo").iterdir()) == []
    finally:
        alice.predict("private", api_name="/stop_sample")


@pytest.mark.slow
def test_in_the_app_caps_and_server_paths_are_refused_before_anything_is_written(app, tmp_path):
    server, runs = app
    alice = visitor(server.url)
    for args, message in [(sample_args("capped", k=9), "LAB_MAX_K"), (sample_args("capped", n=33), "LAB_MAX_N"),
                          (sample_args("capped", tokens=300), "LAB_MAX_NEW_TOKENS"),
                          (sample_args("capped", model="big-org/huge-llama"),
                           "405.85 billion parameters, above this app's cap of 1.5 (the owner sets "
                           "LAB_MAX_MODEL_PARAMS)"),
                          (sample_args("capped", model=str(big_config(tmp_path / "big"))), "folders on the server")]:
        assert message in refused(alice, *args, api_name="/start_sampling")
    assert not (runs / "capped").exists()
    alice.predict(*sample_args("mine"), api_name="/start_sampling")
    wait_until(lambda: "finished" in job_status(alice, "mine"))
    message = refused(alice, "mine", "/etc/passwd", "dpo-1", "", *train_form(), api_name="/start_training")
    assert "pair sets" in message and "JSON" not in message


def test_the_card_preview_reads_only_the_runs_staged_folders(runs_dir):
    from lab.ui.share import card_preview

    other = Run.open("other").file("hub") / "secret-repo"
    other.mkdir(parents=True)
    (other / "README.md").write_text("the other run's card")
    Run.open("t").file("hub").mkdir(parents=True)
    assert card_preview("t", "../../other/hub/secret-repo") == ""  # it used to show the other run's card
    assert "the other run's card" in card_preview("other", "secret-repo")


@pytest.mark.browser
def test_in_a_browser_a_visitor_keeps_their_run_across_a_reload_and_another_never_sees_it(tmp_path):
    """Two browsers on the Space: the id kept in Alice's localStorage brings her run back after a reload (and a new
    id is not made each visit); Bob's picker never lists it, and typing its name gets "No such run"."""
    from playwright.sync_api import sync_playwright

    from tests.browser_helpers import AppServer, CHROMIUM, CHROMIUM_ARGS, choose_run, click, sample_form, shot, \
        wait_for_text, wait_for_toast

    (tmp_path / "runs").mkdir()
    server = AppServer(tmp_path / "runs", env=SPACE)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            alice, bob = (browser.new_context(viewport={"width": 1280, "height": 800}).new_page() for _ in "ab")
            for page in (alice, bob):
                page.set_default_timeout(60_000)
                page.goto(server.url)
            choose_run(alice, "alices-run")
            sample_form(alice, 2, 1, 8)
            click(alice, "Sample")
            wait_for_text(alice, "Sampling finished.")
            alice.reload()
            wait_for_text(alice, "2 responses to 2 instructions", timeout_s=30)
            assert alice.get_by_label("Run", exact=True).input_value() == "alices-run"
            bob.get_by_label("Run", exact=True).click()
            assert bob.get_by_role("option", name="alices-run").count() == 0
            choose_run(bob, "alices-run")
            wait_for_toast(bob, "No such run 'alices-run'")
            shot(bob, "visitor-no-such-run")
            browser.close()
    finally:
        server.close()
    owners = list((tmp_path / "runs").glob("*/owner.json"))
    assert [o.parent.name for o in owners] == ["alices-run"]
