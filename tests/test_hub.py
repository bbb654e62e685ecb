"""lab.hub: staging, cards, pushing through huggingface_hub's real client to a local Hub stand-in, and secrets.

The fixture run is written directly in the documented record formats (samples, judgments, rankings, spotcheck,
pairs, run.json) with a real PEFT LoRA adapter on the tiny random Llama, so these tests do not depend on the other
stages' code.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cards, hub
from lab.adapters import read_state
from lab.hub import PushConfig
from lab.errors import LabError
from lab.store import Run, append_jsonl, atomic_write_json, atomic_write_text, write_jsonl
from tests.hubstandin import HubStandIn

ROOT = Path(__file__).resolve().parent.parent
# Fake credentials, planted to prove they never leak; split so the source holds nothing key-shaped.
TOKEN = "hf_" + "PLANTEDtokenDoNotLeak" + "0123456789abcdef"
GROQ_KEY = "gsk_" + "PLANTEDgroqKeyDoNotLeak" + "0123456789"
JUDGE_PROMPT = "Compare the two answers to the question.\nThink step by step, then answer with A, B or tie."
JUDGE_TEMPLATE = "[Question]\n{question}\n[Answer A]\n{a}\n[Answer B]\n{b}\nWhich is better? Reply A, B or tie."
DECODING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 3}


# ---- a run written in the documented formats ----------------------------------------------------------------------
def _samples(n_instr: int = 3, k: int = 3) -> list[dict]:
    return [{"instruction_id": f"i{i}", "sample_index": s, "prompt": f"Question {i}?", "text": "answer " * (s + 1) * 3,
             "model": "tiny-random", "model_path": "/cache/tiny-random-llama", "decoding": DECODING,
             "prompt_tokens": 12, "completion_tokens": 4 * (s + 1), "finish_reason": "stop" if s else "length",
             "duplicate_of": None} for i in range(n_instr) for s in range(k)]


def _judgments() -> list[dict]:
    out = []
    for i in range(3):
        for order, verdict in (("ab", "b"), ("ba", "b" if i else "a")):  # i0 flips with the order: inconsistent
            shown_first = "a" if order == "ab" else "b"
            out.append({"instruction_id": f"i{i}", "a": 0, "b": 2, "order": order, "verdict": verdict,
                        "position_verdict": "A" if verdict == shown_first else "B",
                        "reasoning": "B is more complete.", "raw": '{"verdict": "B"}', "backend": "groq",
                        "model": "llama-3.3-70b-versatile", "prompt_hash": "ab12cd34",
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20}})
    return out


def _pairs(source: str) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": "answer " * 9}],
             "rejected": [{"role": "assistant", "content": "answer " * 3}],
             "meta": {"instruction_id": f"i{i}", "chosen_index": 2, "rejected_index": 0, "source": source,
                      **({"margin": 0.5} if source == "pairrm" else {"verdict": "b"})}} for i in (1, 2)]


def _adapter(run: Run, name: str, pairs_source: str) -> Path:
    """A real LoRA adapter on the tiny random Llama, with lab.train's training.json and metrics.jsonl beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lab.models import tiny_random_path

    out = run.adapter_dir(name)
    model = AutoModelForCausalLM.from_pretrained(tiny_random_path())
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    settings = {"model": "", "epochs": 1.0, "lr": 5e-5, "beta": 0.1, "loss_type": "sigmoid", "lora_r": 4,
                "lora_alpha": 8, "batch_size": 2, "max_length": 512, "seed": 0}
    atomic_write_json(out / "training.json", {
        "status": "done", "settings": settings, "base_model": "tiny-random", "base_model_path": tiny_random_path(),
        "init_adapter": None, "pairs": {"path": str(run.pairs_file(pairs_source)), "sha256": "e3b0", "n": 2,
                                        "n_train": 2, "n_eval": 0},
        "global_step": 2, "max_steps": 2, "final": {"loss": 0.6931, "rewards/accuracies": 0.5},
        "warnings": ["reward accuracy reached 1.0 while the chosen log-prob fell"], "versions": {"trl": "1.16.0"}})
    append_jsonl(out / "metrics.jsonl", [{"split": "train", "step": 1, "loss": 0.7}, {"split": "train", "step": 2,
                                                                                     "loss": 0.6931}])
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    (out / "training_args.bin").write_bytes(b"pickle that could hold a hub_token")
    return out


def build_run(run: Run, iteration: bool = False) -> Run:
    append_jsonl(run.file("instructions"), [{"id": f"i{i}", "prompt": f"Question {i}?", "source": "bundled"}
                                            for i in range(3)])
    append_jsonl(run.file("samples"), _samples())
    append_jsonl(run.file("judgments"), _judgments())
    append_jsonl(run.file("rankings"), [{"instruction_id": "i1", "scores": [0.1, 0.2, 0.9], "ranks": [3, 2, 1]}])
    append_jsonl(run.file("spotcheck"), [{"instruction_id": "i1", "a": 0, "b": 2, "human": "b", "judge": "b",
                                          "time": 1.0}])
    for source in ("judge", "pairrm"):
        write_jsonl(run.pairs_file(source), _pairs(source))
    run.record_stage("sample", {"model": "tiny-random", "instructions": "bundled", "n": 3, "k": 3, **DECODING,
                                "model_path": "/cache/tiny-random-llama"})
    run.record_stage("judge", {"backend": "groq", "model": "llama-3.3-70b-versatile", "prompt": JUDGE_PROMPT,
                               "both_orders": True, "api_key": GROQ_KEY})  # scrubbed by the store
    atomic_write_text(run.file("judge_prompt"), JUDGE_TEMPLATE)
    run.record_stage("pairs-judge", {"strategy": "best-vs-worst", "margin": 0.0, "stats": {"pairs": 2}})
    _adapter(run, "dpo-judge", "judge")
    if iteration:
        build_round(run, 1)
    return run


def build_round(run: Run, k: int, prompt_hash: str = "0123456789abcdef") -> Run:
    """Round k of self-rewarding DPO as lab.iterate lays it out: samples, scores, pairs-self, adapters/round-k."""
    it = run.iteration(k)
    append_jsonl(it.file("samples"), _samples())
    append_jsonl(it.file("scores"), [{"set": "train", "instruction_id": f"i{i}", "sample_index": s, "model": None,
                                      "eval_index": 0, "score": float(s + 2), "method": "parsed", "probs": None,
                                      "raw": f"Score: {s + 2}", "judge": "self", "prompt_hash": prompt_hash}
                                     for i in range(3) for s in range(3)])
    write_jsonl(it.pairs_file("self"), _pairs("self"))
    append_jsonl(run.file("iterate"), [{"round": k, "policy": None, "reference": None, "pairs_kept": 2,
                                        "dropped_ties": 1, "score_mean": 3.0}])
    out = _adapter(it, f"round-{k}", "self")
    state = json.loads((out / "training.json").read_text())
    atomic_write_json(out / "training.json", {**state, "init_adapter": str(run.adapter_dir("dpo-judge"))})
    return it


@pytest.fixture
def lab_run(run):
    return build_run(run)


@pytest.fixture
def online(monkeypatch):
    """conftest keeps the hub offline; these tests talk to a server on 127.0.0.1 only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("SPACE_ID", raising=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- plan and staging ---------------------------------------------------------------------------------------------
def test_plan_finds_data_sets_adapters_and_iterations(run):
    build_run(run, iteration=True)
    names = [(i.kind, i.name) for i in hub.plan(run, PushConfig())]
    assert names == [("dataset", "t-judge"), ("dataset", "t-pairrm"), ("model", "t-dpo-judge"),
                     ("dataset", "t-iter1-self"), ("model", "t-iter1-round-1")]
    only = hub.plan(run, PushConfig(only="dpo-judge", prefix="exp"))
    assert [i.name for i in only] == ["exp-dpo-judge"]
    assert [i.name for i in hub.plan(run, PushConfig(adapters=False, iterations=False))] == ["t-judge", "t-pairrm"]


def test_repo_names_the_hub_would_refuse_are_caught_before_staging(lab_run):
    with pytest.raises(LabError, match="choose a shorter or simpler --prefix"):
        hub.plan(lab_run, PushConfig(prefix="x" * 90))
    with pytest.raises(LabError, match="not a valid Hub repo name"):
        hub.plan(lab_run, PushConfig(prefix="my-"))  # "my--judge"


def test_nothing_to_push_says_what_to_do(run):
    run.path.mkdir(parents=True)
    with pytest.raises(LabError, match="build pairs"):
        hub.plan(run, PushConfig())
    with pytest.raises(LabError, match="no-datasets, --no-adapters and --no-merged"):  # merged models count too
        PushConfig(datasets=False, adapters=False, merged=False).validate()


def test_dry_run_stages_loadable_data_set_with_card(lab_run, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a dry run must not need the Hub
    out = hub.push_run(lab_run, PushConfig(dry_run=True, namespace="alice"))
    assert out["dry_run"] and not lab_run.file("push").exists()
    folder = lab_run.file("hub") / "t-judge"
    assert sorted(_files(folder)) == ["README.md", "data/train-00000-of-00001.parquet",
                                      "judgments/train-00000-of-00001.parquet", "rankings/train-00000-of-00001.parquet",
                                      "samples/train-00000-of-00001.parquet", "spotcheck/train-00000-of-00001.parquet"]
    import datasets

    pairs = datasets.load_dataset(str(folder), split="train")  # the card's `configs:` is what the Hub reads too
    assert pairs.num_rows == 2 and pairs[0]["chosen"][0]["role"] == "assistant"
    assert pairs[0]["meta"]["source"] == "judge"
    judged = datasets.load_dataset(str(folder), "judgments", split="train")
    assert judged.num_rows == 6 and judged[0]["usage"]["prompt_tokens"] == 100
    assert datasets.load_dataset(str(folder), "samples", split="train").num_rows == 9


def test_data_set_card_says_how_it_was_made(lab_run):
    hub.push_run(lab_run, PushConfig(dry_run=True, namespace="alice"))
    card = (lab_run.file("hub") / "t-judge" / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: judgments" in card and "path: data/*" in card
    assert JUDGE_PROMPT in card and JUDGE_TEMPLATE in card  # the judge prompt and its template, whole
    assert "ab12cd34" in card and "llama-3.3-70b-versatile" in card  # its hash and the judge model
    assert "| consistency_rate | 0.6667 |" in card and "| calls | 6 |" in card  # the call plan and its figures
    assert "| verdicts.inconsistent | 1 |" in card and "| first_position_win_rate |" in card
    assert '"temperature": 0.7' in card and "tiny-random" in card and "| max_new_tokens | 64 |" in card
    assert "best-vs-worst" in card  # pair strategy
    assert '### Chat template arguments' in card and '`{"date_string": "26 Jul 2024"}`' in card  # what sampling used
    assert "| chosen is the longer answer | 2/2 |" in card and "| person agrees with the judge | 1/1 |" in card
    assert 'load_dataset("alice/t-judge", "samples", split="train")' in card
    assert "api_key" not in card and GROQ_KEY not in card


def test_self_rewarding_round_cards_give_its_lineage(run):
    from lab import score as iterate  # the self-rewarding scorer: its prompt and its hash
    build_run(run)
    build_round(run, 1, iterate.PROMPT_HASH)
    hub.push_run(run, PushConfig(dry_run=True, namespace="alice", only="self,round-1"))
    folder = run.file("hub") / "t-iter1-self"
    assert (folder / "scores" / hub.SHARD).exists()
    card = (folder / "README.md").read_text()
    assert "self-rewarding round 1" in card and iterate.SCORE_PROMPT.splitlines()[0] in card
    assert "### Round 1" in card and "| pairs_kept | 2 |" in card and "| mean score | 3.0 |" in card
    model_card = (run.file("hub") / "t-iter1-round-1" / "README.md").read_text()
    assert "Continued from adapter" in model_card and "datasets:\n- alice/t-iter1-self" in model_card


def test_adapter_folder_loads_and_card_lists_every_parameter(lab_run):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lab.models import tiny_random_path

    hub.push_run(lab_run, PushConfig(dry_run=True, namespace="alice"))
    folder = lab_run.file("hub") / "t-dpo-judge"
    names = set(_files(folder))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.jsonl",
            "training.json"} <= names
    assert not any(n.startswith("checkpoints") or n.endswith((".bin", ".pt")) for n in names)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_random_path()), str(folder))
    source = load_file(lab_run.adapter_dir("dpo-judge") / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(source) == 8 and all(torch.equal(loaded[k.replace(".weight", ".default.weight")], v)
                                                   for k, v in source.items())
    card = (folder / "README.md").read_text()
    settings = json.loads((folder / "training.json").read_text())["settings"]
    assert all(f"| {k} |" in card for k in settings)  # every training parameter
    assert "| loss | 0.6931 |" in card and "chosen log-prob fell" in card  # final metrics and training warnings
    assert "datasets:\n- alice/t-judge" in card and "https://huggingface.co/datasets/alice/t-judge" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("alice/t-dpo-judge")' in card
    assert "| r | 4 |" in card and "library_name: peft" in card


def test_bundled_base_points_at_its_hub_id(run):
    state = {"base_model": "bundled", "base_model_path": "/home/u/.cache/preference-lab/bundled-smollm2-135m"}
    assert cards.base_model_id(state, run) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cards.base_model_id({"base_model": "meta-llama/Llama-3.2-1B-Instruct"}, run) == \
        "meta-llama/Llama-3.2-1B-Instruct"
    assert cards.base_model_id({"base_model": "tiny-random", "base_model_path": "/x/tiny"}, run) is None


def test_staged_adapter_points_at_the_hub_base_and_leaves_the_source_alone(lab_run):
    src = lab_run.adapter_dir("dpo-judge")
    state = json.loads((src / "training.json").read_text())
    atomic_write_json(src / "training.json", {**state, "base_model": "bundled"})
    before = (src / "adapter_config.json").read_bytes()
    hub.push_run(lab_run, PushConfig(dry_run=True, namespace="alice", datasets=False))
    staged = json.loads((lab_run.file("hub") / "t-dpo-judge" / "adapter_config.json").read_text())
    assert staged["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (src / "adapter_config.json").read_bytes() == before
    card = (lab_run.file("hub") / "t-dpo-judge" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card


def test_restaging_replaces_the_folder(lab_run):
    cfg = PushConfig(dry_run=True, namespace="alice")
    hub.push_run(lab_run, cfg)
    stale = lab_run.file("hub") / "t-judge" / "stale.txt"
    stale.write_text("old")
    hub.push_run(lab_run, cfg)
    assert not stale.exists() and not list(lab_run.file("hub").glob(".*"))  # no temp folders left behind


# ---- pushing through huggingface_hub to the stand-in ---------------------------------------------------------------
def test_push_uploads_the_staged_folders_privately(lab_run, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(token=TOKEN, user="alice") as server:
        out = hub.push_run(lab_run, PushConfig(endpoint=server.url))
    assert out["namespace"] == "alice"  # from whoami
    assert set(server.repos) == {("dataset", "alice/t-judge"), ("dataset", "alice/t-pairrm"),
                                 ("model", "alice/t-dpo-judge")}
    for (kind, repo_id), repo in server.repos.items():
        assert repo["visibility"] == "private" and repo["commits"] == 1
        assert repo["files"] == _files(lab_run.file("hub") / repo_id.split("/")[1])  # exactly what was staged
    links = {r["repo_id"]: r["url"] for r in hub.pushed(lab_run)}
    assert links["alice/t-judge"] == f"{server.url}/datasets/alice/t-judge"
    assert links["alice/t-dpo-judge"] == f"{server.url}/alice/t-dpo-judge"
    assert not server.unknown and sorted(server.validated) == ["dataset", "dataset", "model"]  # cards' YAML checked
    assert lab_run.stage_settings("push")["private"] is True


def test_push_public_to_an_organisation_and_again(lab_run, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(token=TOKEN) as server:
        cfg = PushConfig(endpoint=server.url, namespace="team", private=False, adapters=False, only="judge")
        hub.push_run(lab_run, cfg)
        hub.push_run(lab_run, cfg)  # the repo exists now: a second push is a second commit, not an error
    repo = server.repos[("dataset", "team/t-judge")]
    assert repo["visibility"] == "public" and repo["commits"] == 2
    assert len(hub.pushed(lab_run)) == 1 and len(lab_run.read("push")) == 2
    assert hub.pushed(lab_run)[0]["private"] is False and "warning" not in hub.pushed(lab_run)[0]


def test_an_existing_public_repo_is_reported_not_hidden(lab_run, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(token=TOKEN) as server:
        server.repos[("dataset", "alice/t-judge")] = {"visibility": "public", "files": {}, "commits": 0}
        out = hub.push_run(lab_run, PushConfig(endpoint=server.url, only="judge"))
    assert out["repos"][0]["private"] is False and "PUBLIC" in out["repos"][0]["warning"]


def test_space_pushes_with_the_visitors_token_only(lab_run, online, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "owner/preference-lab")
    monkeypatch.setenv("HF_TOKEN", "hf_OWNERsSpaceSecret0123456789")
    with pytest.raises(LabError, match="Sign in with Hugging Face"):
        hub.resolve_token(None)
    visitor = "hf_VISITORoauthToken0123456789"
    with HubStandIn(token=visitor, user="visitor") as server:
        hub.push_run(lab_run, PushConfig(endpoint=server.url, only="judge"), token=visitor)
    assert ("dataset", "visitor/t-judge") in server.repos
    assert {h.get("authorization") for _, _, h, _ in server.requests} == {f"Bearer {visitor}"}


def test_a_hosted_app_never_pushes_with_the_owners_saved_login(lab_run, online, monkeypatch, tmp_path):
    """LAB_HOSTED=1 off a Space: the token `hf auth login` saved (a file, not the environment) is the owner's."""
    import huggingface_hub.constants

    saved = tmp_path / "hf-token"
    saved.write_text("hf_OWNERsSavedLogin0123456789")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(saved))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("LAB_HOSTED", "1")
    assert hub.token_source(None) == ""  # the page offers no push as the owner
    with HubStandIn(token="hf_OWNERsSavedLogin0123456789", user="owner") as server:
        with pytest.raises(LabError, match="Sign in with Hugging Face"):
            hub.push_run(lab_run, PushConfig(endpoint=server.url, namespace="owner", only="judge"))
    assert server.repos == {} and server.requests == []
    monkeypatch.delenv("LAB_HOSTED")
    assert "hf auth login" in hub.token_source(None)  # on the owner's own machine the saved login is theirs


@pytest.mark.parametrize("space", [True, False])
def test_a_hosted_visitor_pushes_only_into_namespaces_they_own(lab_run, online, monkeypatch, space):
    monkeypatch.setenv(*(("SPACE_ID", "owner/preference-lab") if space else ("LAB_HOSTED", "1")))
    visitor = "hf_VISITORoauthToken0123456789"
    with HubStandIn(token=visitor, user="visitor", orgs=("club",)) as server:
        server.repos[("dataset", "owner/t-judge")] = {"visibility": "public", "files": {}, "commits": 0}
        for namespace in ("owner", "someone-else"):  # an existing owner repo, and a namespace no one claimed
            with pytest.raises(LabError, match=f"Namespace '{namespace}' is not yours.*club, visitor"):
                hub.push_run(lab_run, PushConfig(endpoint=server.url, namespace=namespace, only="judge"),
                             token=visitor)
        assert server.repos[("dataset", "owner/t-judge")]["commits"] == 0
        assert not any(m == "POST" for m, *_ in server.requests)  # only whoami was asked: nothing created
        hub.push_run(lab_run, PushConfig(endpoint=server.url, namespace="club", only="judge"), token=visitor)
    assert server.repos[("dataset", "club/t-judge")]["commits"] == 1


def test_token_never_reaches_a_file_a_log_or_a_payload(lab_run, online, monkeypatch, capfd, caplog, runs_dir,
                                                       tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # huggingface_hub's own files are checked too
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("GROQ_API_KEY", GROQ_KEY)
    caplog.set_level("DEBUG")
    with HubStandIn(token=TOKEN) as server:
        hub.push_run(lab_run, PushConfig(endpoint=server.url))
        env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir)}
        cli = subprocess.run([sys.executable, "-m", "lab", "push", "--run", "t", "--endpoint", server.url],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert server.repos[("model", "alice/t-dpo-judge")]["commits"] == 2  # both pushes really went up
    written = [p for p in tmp_path.rglob("*") if p.is_file()]  # the runs, HF_HOME and anything else under tmp
    assert len(written) > 20
    for secret in (TOKEN, GROQ_KEY):
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
        for _, _, headers, body in server.requests:
            assert secret.encode() not in body
            assert all(secret not in v for k, v in headers.items() if k != "authorization")
        for repo in server.repos.values():
            assert not any(secret.encode() in data for data in repo["files"].values())
        assert secret not in cli.stdout + cli.stderr + caplog.text + "".join(capfd.readouterr())


def test_a_secret_inside_the_run_stops_the_push(lab_run, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # in the adapter, the last repo staged: nothing at all may go up, not even the data sets staged before it
    append_jsonl(lab_run.adapter_dir("dpo-judge") / "metrics.jsonl", [{"step": 3, "note": f"token {TOKEN}"}])
    with HubStandIn(token=TOKEN) as server, pytest.raises(LabError, match="metrics.jsonl contains a token"):
        hub.push_run(lab_run, PushConfig(endpoint=server.url))
    assert not server.repos and not lab_run.file("push").exists()


def test_an_empty_pairs_file_stops_the_push_before_any_upload(lab_run, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    write_jsonl(lab_run.pairs_file("pairrm"), [])
    with HubStandIn(token=TOKEN) as server, pytest.raises(LabError, match="holds no pairs"):
        hub.push_run(lab_run, PushConfig(endpoint=server.url))
    assert not server.repos


# ---- errors a person can fix --------------------------------------------------------------------------------------
def test_hub_errors_say_what_to_do(lab_run, online, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login from the developer's machine
    with pytest.raises(LabError, match="set HF_TOKEN"):
        hub.push_run(lab_run, PushConfig())
    monkeypatch.setenv("HF_TOKEN", "hf_wrongToken0123456789")
    with HubStandIn(token=TOKEN) as server, pytest.raises(LabError, match="invalid or expired") as err:
        hub.push_run(lab_run, PushConfig(endpoint=server.url))
    assert "hf_wrongToken" not in str(err.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(token=TOKEN) as server, pytest.raises(LabError, match="needs write access to that namespace"):
        hub.push_run(lab_run, PushConfig(endpoint=server.url, namespace="someone-else"))
    with pytest.raises(LabError, match="Could not reach the Hub"):
        hub.push_run(lab_run, PushConfig(endpoint="http://127.0.0.1:9", namespace="alice"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LabError, match="HF_HUB_OFFLINE"):
        hub.push_run(lab_run, PushConfig(namespace="alice"))


def test_cli_dry_run_and_bad_flags(lab_run, runs_dir):
    env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir)}
    ok = subprocess.run([sys.executable, "-m", "lab", "push", "--run", "t", "--dry-run", "--namespace", "alice"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["dry_run"] and [r["repo_id"] for r in summary["repos"]][0] == "alice/t-judge"
    assert Path(summary["repos"][0]["folder"], "README.md").exists()
    bad = subprocess.run([sys.executable, "-m", "lab", "push", "--run", "t", "--no-datasets", "--no-adapters"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Nothing to push" in bad.stderr


@pytest.mark.slow
def test_an_adapter_trained_by_lab_train_pushes_with_its_real_training_record(lab_run, online, monkeypatch):
    """End to end with the real trainer: its training.json feeds the card, the staged adapter loads."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lab.train import TrainConfig
    from lab.models import tiny_random_path
    from lab.train import train_adapter

    cfg = TrainConfig(model="tiny-random", batch_size=2, max_steps=2, gradient_checkpointing=False, eval_fraction=0.0)
    train_adapter(lab_run, "judge", "trained", cfg)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(token=TOKEN) as server:
        hub.push_run(lab_run, PushConfig(endpoint=server.url, only="judge,trained"))
    files = server.repos[("model", "alice/t-trained")]["files"]
    card = files["README.md"].decode()
    assert "datasets:\n- alice/t-judge" in card and "| beta | 0.1 |" in card and "| global_step |" not in card
    loss = read_state(lab_run.adapter_dir("trained"))["final"]["train/loss"]  # the record's, to 6 digits
    assert "## Final metrics" in card and f"| train/loss | {float(f'{loss:.6g}')} |" in card
    assert not any(name.startswith("checkpoints/") for name in files)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_random_path()),
                              str(lab_run.file("hub") / "t-trained"))
