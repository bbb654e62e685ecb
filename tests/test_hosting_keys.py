"""Where an API key may go (issue 9, item 1): the owner's key from the environment only to the owner's URL; a key
typed by a visitor (or named explicitly on the command line) wherever it was given. Checked on ApiBackend, on the
judge / compare / iterate paths, and on the real app started as a Space, with local providers on 127.0.0.1 that
record the Authorization header of every request they receive."""
from __future__ import annotations

import pytest

from lab.judge import JudgeConfig
from lab.errors import LabError
from lab.judge import judge_run
from lab.judge_backends import ApiBackend, resolve_key
from lab.progress import Progress
from lab.ratelimit import RateLimiter
from tests.fakeprovider import FakeProvider, json_verdict
from tests.test_judge import add_samples, prefer_higher

# planted, split so that the source holds nothing key-shaped
OWNER = "sk-" + "OWNERsKeyFromTheSpaceSecrets" + "0123456789"
VISITOR = "sk-" + "visitorTypedThisKey" + "0123456789"
SPACE_ENV = {"SPACE_ID": "owner/preference-lab", "SYSTEM": "spaces", "OAUTH_CLIENT_ID": "client-id",
             "OAUTH_CLIENT_SECRET": "client-secret", "OAUTH_SCOPES": "openid profile contribute-repos",
             "OPENID_PROVIDER_URL": "https://huggingface.co"}


@pytest.fixture
def owner(monkeypatch):
    """The owner's provider: OPENAI_API_KEY and OPENAI_BASE_URL set for it, as a Space's secrets would be."""
    with FakeProvider(key=None, answer=prefer_higher) as fp:  # accepts any key: what it was sent is the test
        monkeypatch.setenv("OPENAI_API_KEY", OWNER)
        monkeypatch.setenv("OPENAI_BASE_URL", fp.url + "/v1")
        monkeypatch.delenv("LAB_API_KEY_OPENAI", raising=False)
        yield fp


@pytest.fixture
def visitor():
    """A server a visitor controls: it accepts any key and records what it was sent."""
    with FakeProvider(key=None, answer=prefer_higher) as fp:
        yield fp


def backend(base_url: str = "", api_key: str | None = None, key_env: str = "", kind: str = "openai") -> ApiBackend:
    return ApiBackend(kind, "m", RateLimiter(0), base_url=base_url, api_key=api_key, key_env=key_env,
                      max_retries=0, timeout_s=5)


def judge_cfg(base_url: str, **kw) -> JudgeConfig:
    return JudgeConfig(**{"backend": "openai", "model": "m", "base_url": base_url, "rpm": 0, "concurrency": 2,
                          "timeout_s": 5, "max_retries": 0, **kw})


# ---- the rule, on ApiBackend -----------------------------------------------------------------------------------------
def test_the_owners_key_is_refused_for_a_url_someone_else_chose(owner, visitor, run):
    with pytest.raises(LabError, match="give your own key") as err:
        backend(visitor.url + "/v1")
    assert OWNER not in str(err.value) and "--api-key-env" in str(err.value)
    add_samples(run, n=1, k=3)
    with pytest.raises(LabError, match="give your own key"):
        judge_run(run, judge_cfg(visitor.url + "/v1"), Progress(quiet=True))
    assert visitor.calls == 0 and not run.read("judgments")


def test_the_owners_key_goes_to_the_owners_url(owner, run):
    add_samples(run, n=1, k=3)
    judge_run(run, judge_cfg(""), Progress(quiet=True))  # no base URL: the owner's
    judge_run(run, judge_cfg(owner.url + "/v1/", model="m2"), Progress(quiet=True))  # the same URL, spelled out
    assert owner.calls == 8 and set(owner.auth_headers) == {f"Bearer {OWNER}"}


def test_groqs_default_url_is_the_owners_when_no_groq_base_url_is_set(monkeypatch, visitor):
    monkeypatch.setenv("GROQ_API_KEY", OWNER)
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    assert backend("https://API.groq.com/", kind="groq").url == "https://API.groq.com/"
    with pytest.raises(LabError, match="not the groq URL"):
        backend(visitor.url, kind="groq")


def test_an_explicit_key_may_go_where_it_was_given(owner, visitor, monkeypatch, run):
    """--api-key-env NAME (the owner's own choice), a key passed in memory, and $LAB_API_KEY_OPENAI (typed in the
    app, for that backend)."""
    monkeypatch.setenv("MY_OTHER_KEY", VISITOR)
    assert resolve_key("openai", visitor.url, key_env="MY_OTHER_KEY")[0] == VISITOR
    assert resolve_key("openai", visitor.url, api_key=VISITOR)[0] == VISITOR
    add_samples(run, n=1, k=3)
    monkeypatch.setenv("LAB_API_KEY_OPENAI", VISITOR)
    judge_run(run, judge_cfg(visitor.url + "/v1"), Progress(quiet=True))
    judge_run(run, judge_cfg("", model="m2"), Progress(quiet=True))  # the owner's URL, on the visitor's key too
    assert visitor.calls == 4 and set(visitor.auth_headers) == {f"Bearer {VISITOR}"}
    assert owner.calls == 4 and set(owner.auth_headers) == {f"Bearer {VISITOR}"}  # the owner's key unused


def test_no_key_at_all_says_where_to_give_one(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LAB_API_KEY_OPENAI", raising=False)
    with pytest.raises(LabError, match="OPENAI_API_KEY is not set.*API key box"):
        backend("http://127.0.0.1:9/v1")


def test_userinfo_in_a_base_url_never_reaches_a_message(monkeypatch):
    monkeypatch.setenv("MY_KEY", VISITOR)
    b = backend("http://alice:sk-inTheUrl0123456789@127.0.0.1:9/v1", key_env="MY_KEY")
    with pytest.raises(LabError, match="at http://\\*\\*\\*@127.0.0.1:9/v1 ") as err:  # nothing listens there
        b.complete("hello")
    assert "sk-inTheUrl" not in str(err.value) and "alice" not in str(err.value)


# ---- compare and iterate obey the same rule --------------------------------------------------------------------------
def test_compare_and_iterate_judges_follow_the_rule(owner, monkeypatch):
    from lab import compare
    from lab.compare import CompareConfig
    from lab.iterate import IterateConfig
    from lab.score import api_backend

    compare.check_scorers(CompareConfig(judge="openai"), None)  # the owner's key, for the owner's URL
    assert api_backend(IterateConfig(judge="openai")).api_key == OWNER
    monkeypatch.setenv("LAB_API_KEY_OPENAI", VISITOR)  # a typed key wins over the owner's in that job
    assert api_backend(IterateConfig(judge="openai")).api_key == VISITOR
    monkeypatch.delenv("OPENAI_API_KEY")
    compare.check_scorers(CompareConfig(judge="openai"), None)  # the visitor's key alone is enough
    monkeypatch.delenv("LAB_API_KEY_OPENAI")
    with pytest.raises(LabError, match="needs an API key: OPENAI_API_KEY is not set"):
        compare.check_scorers(CompareConfig(judge="openai"), None)


def test_a_typed_key_travels_under_its_own_variable():
    from lab.ui.common import typed_key_env

    assert typed_key_env("openai", f"  {VISITOR} ") == {"LAB_API_KEY_OPENAI": VISITOR}  # never OPENAI_API_KEY
    assert typed_key_env("groq", "") is None and typed_key_env("local", VISITOR) is None


# ---- the real app, as a Space ----------------------------------------------------------------------------------------
def start_app(runs_dir, owner_fp: FakeProvider):
    from gradio_client import Client

    from tests.browser_helpers import AppServer

    from lab import hosting

    app = AppServer(runs_dir, env={**SPACE_ENV, "OPENAI_API_KEY": OWNER, "OPENAI_BASE_URL": owner_fp.url + "/v1"})
    client = Client(app.url, verbose=False)
    vid, _ = client.predict(None, None, api_name="/arrive")  # the page's load event: this client is now a visitor
    assert hosting.claim("t", hosting.Visitor.of(None, vid))  # the test's run is this visitor's own
    return app, client


def judge_via_api(client, base_url: str, key: str, model: str = "m"):
    from lab.judge import DEFAULT_TEMPLATE
    from lab.records.verdicts import TIE_BAND

    return client.predict("t", "openai", model, base_url, "knockout", 60, 2, 8, DEFAULT_TEMPLATE, key, "auto",
                          TIE_BAND, api_name="/start_judging")  # the calibration inputs come after the key


@pytest.mark.slow
def test_the_app_on_a_space_never_sends_the_owners_key_to_a_visitors_server(run, runs_dir, owner, visitor):
    from gradio_client.exceptions import AppError

    from lab import jobs

    add_samples(run, n=1, k=3)  # the knockout plan's 4 calls per judging, 1 s apart (the hosted app's 60 a minute)
    app, client = start_app(runs_dir, owner)
    try:
        with pytest.raises(AppError, match="type your own key for that server"):  # refused before any job starts
            judge_via_api(client, visitor.url + "/v1", "")
        assert jobs.status(run)["state"] == "none"
        assert "started" in judge_via_api(client, visitor.url + "/v1", VISITOR)
        assert jobs.wait(run, timeout_s=120)["state"] == "done"
        assert "started" in judge_via_api(client, "", "", model="m2")  # no URL, no key: the owner's, to the owner
        assert jobs.wait(run, timeout_s=120)["state"] == "done"
    finally:
        app.close()
    assert visitor.calls == 4 and set(visitor.auth_headers) == {f"Bearer {VISITOR}"}
    assert owner.calls == 4 and set(owner.auth_headers) == {f"Bearer {OWNER}"}
    for path in runs_dir.rglob("*"):
        assert not path.is_file() or VISITOR not in path.read_text(errors="replace"), path


@pytest.mark.slow
def test_the_apps_compare_and_iterate_jobs_use_the_visitors_key_alone(run, runs_dir, owner, tmp_path):
    """Compare and Iterate have no Base URL: their API judge is the owner's URL. A visitor who types a key pays for
    their own calls there (the owner's key is not used by that job); without a typed key the owner's key is used."""
    import itertools

    from lab import jobs
    from lab.ui import compare as compare_tab, iterate as iterate_tab
    from tests.test_compare import HELD, heldout_file, make_adapter, write_training

    write_training(run, ["Explain why the sky is blue.", "Name a fruit."])
    make_adapter(run, "dpo", seed=1)
    # one instruction each (the API judge's calls are 2 s apart at the app's 30 a minute): both orders of one pair to
    # compare, two self-scores to iterate on; any one call shows whose key went out
    compare_values = {"n": 1, "max_new_tokens": 6, "temperature": 0.7, "top_p": 0.9, "seed": 0, "pairrm": "",
                      "judge": "openai", "judge_model": "m", "duplicates": "drop", "near_duplicate": 0.7,
                      "batch_size": 8, "score": "none", "score_model": "", "reward": "", "checks": True}
    iterate_values = {"rounds": 1, "samples": 2, "evaluations": 1, "n": 1, "max_new_tokens": 6, "judge": "openai",
                      "judge_model": "m", "start_adapter": "", "eval_n": 0, "beta": 0.1, "lr": 5e-5, "epochs": 1.0,
                      "max_steps": 1, "lora_r": 4, "seed": 0, "eval_instructions": "heldout", "judge_tokens": 160,
                      "temperature": 0.7, "judge_temperature": 0.7, "train_batch_size": 4,
                      "gradient_checkpointing": True}
    counter = itertools.count()
    owner.answer = lambda req: (f"Fine. Score: {next(counter) % 5 + 1}" if "Score" in req["messages"][-1]["content"]
                                else json_verdict("A"))
    held = heldout_file(tmp_path, HELD[:1])
    app, client = start_app(runs_dir, owner)
    try:
        for key in (VISITOR, ""):
            client.predict("t", [], "file", {"path": held, "meta": {"_type": "gradio.FileData"}},
                           *[compare_values[f] for f in compare_tab.FORM], key, api_name="/start_compare")
            assert jobs.wait(run, timeout_s=300)["state"] == "done", jobs.status(run).get("log_tail")
            seen, owner.auth_headers = list(owner.auth_headers), []
            assert seen and set(seen) == {f"Bearer {VISITOR if key else OWNER}"}, key
            compare_values["seed"] += 1  # new completions: new judge calls
        client.predict("t", *[iterate_values[f] for f in iterate_tab.FORM], VISITOR, api_name="/start_iterate")
        assert jobs.wait(run, timeout_s=300)["state"] == "done", jobs.status(run).get("log_tail")
    finally:
        app.close()
    assert owner.auth_headers and set(owner.auth_headers) == {f"Bearer {VISITOR}"}
