"""Merge and export (lab.merge): a LoRA adapter folded into its base is a plain transformers checkpoint whose logits
equal base + adapter; the CLI runs it; push publishes it as a model repo (staged, scanned, uploaded to the stand-in)."""
from __future__ import annotations

import json

import pytest

from lab import hub, merge, models
from lab.cli import main
from lab.errors import LabError
from lab.hub import PushConfig
from lab.merge import MergeConfig
from lab.store import atomic_write_json
from tests.hubstandin import HubStandIn
from tests.test_hub import TOKEN, build_run, online  # noqa: F401  (online: a fixture)

PROMPT = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"


def random_adapter(run, name: str = "dpo-judge") -> None:
    """Replace the run's adapter by a LoRA whose B matrices are not zero (a fresh LoRA changes nothing: its merge
    would equal the base whatever the merge did), keeping lab.train's training.json beside it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = run.adapter_dir(name)
    state = json.loads((out / "training.json").read_text())
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(models.tiny_random_path())
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out)
    atomic_write_json(out / "training.json", {**state, "method": "orpo"})


@pytest.fixture
def merged_run(run):
    build_run(run)
    random_adapter(run)
    return run


def logits(model, tok):
    import torch

    with torch.no_grad():
        return model(**tok(PROMPT, return_tensors="pt")).logits


def test_merged_logits_equal_base_plus_adapter(merged_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge.run(merged_run, MergeConfig(adapter="dpo-judge"))
    folder = merged_run.merged_dir("dpo-judge")
    assert out["folder"] == str(folder) and merged_run.merged() == ["dpo-judge"]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "merge.json"} <= names
    assert "adapter_config.json" not in names and not any(n.startswith(".") for n in names)
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()  # transformers alone
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(models.tiny_random_path(), dtype="float32").eval()
    plain = logits(base, tok)
    with_adapter = logits(PeftModel.from_pretrained(base, str(merged_run.adapter_dir("dpo-judge"))).eval(), tok)
    assert float((logits(merged, tok) - with_adapter).abs().max()) < 1e-5
    assert float((with_adapter - plain).abs().max()) > 1e-3  # the adapter does change the model
    record = json.loads((folder / "merge.json").read_text())
    assert record["adapter"] == "dpo-judge" and record["dtype"] == "float32" and record["method"] == "orpo"
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "merge_and_unload" in card and "ORPO" in card
    assert merged_run.stage_settings("merge")["adapter"] == "dpo-judge"
    assert "Noise: the answers come from tiny-random" in card.split("## How to load it")[0]  # under the title
    merges = [r for r in merged_run.read("efficiency") if r["stage"] == "merge"]
    assert [(r["name"], r["status"]) for r in merges] == [("dpo-judge", "done")] and merges[0]["wall_s"] > 0
    assert "### Efficiency" in card and "| merge |" in card  # the merge's own figures so far, as a model card has


def test_the_cli_merges_in_another_dtype_and_refuses_what_it_cannot(merged_run, capsys):
    assert main(["merge", "--run", merged_run.name, "--adapter", "dpo-judge", "--dtype", "bfloat16"]) == 0
    config = json.loads((merged_run.merged_dir("dpo-judge") / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert json.loads(capsys.readouterr().out)["dtype"] == "bfloat16"
    assert main(["merge", "--run", merged_run.name, "--adapter", "nope"]) == 2
    assert "No adapter 'nope' in run t (adapters: dpo-judge)" in capsys.readouterr().err
    with pytest.raises(LabError, match="Give --adapter"):
        merge.run(merged_run, MergeConfig())


def test_push_publishes_the_merged_model_as_a_model_repo(merged_run, online, monkeypatch):  # noqa: F811
    merge.run(merged_run, MergeConfig(adapter="dpo-judge"))
    cfg = PushConfig(dry_run=True, namespace="alice", datasets=False, adapters=False)
    staged = hub.push_run(merged_run, cfg)["repos"]
    assert [(r["kind"], r["repo_id"]) for r in staged] == [("merged", "alice/t-dpo-judge-merged")]
    folder = merged_run.file("hub") / "t-dpo-judge-merged"
    assert {"model.safetensors", "config.json", "tokenizer.json", "merge.json", "README.md"} <= set(staged[0]["files"])
    record = (folder / "merge.json").read_text()
    assert str(models.cache_dir()) not in record and str(merged_run.path) not in record  # no local paths
    assert "alice/t-dpo-judge-merged" in (folder / "README.md").read_text()
    assert [i.name for i in hub.plan(merged_run, PushConfig(merged=False, datasets=False))] == ["t-dpo-judge"]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn(token=TOKEN, user="alice") as server:
        hub.push_run(merged_run, PushConfig(endpoint=server.url, datasets=False, adapters=False))
    assert set(server.repos) == {("model", "alice/t-dpo-judge-merged")}
    assert "model.safetensors" in server.repos[("model", "alice/t-dpo-judge-merged")]["files"]
    assert hub.pushed(merged_run)[-1]["kind"] == "merged"


@pytest.mark.slow
def test_the_share_tab_merges_as_a_job_and_offers_the_merged_model_to_push(merged_run):
    import gradio as gr

    from lab import jobs
    from lab.ui import share
    from tests.test_train import wait_for

    assert share.merge_choices(merged_run.name)["choices"] == ["dpo-judge"]
    with pytest.raises(gr.Error, match="Choose an adapter to merge"):
        share.start_merge(merged_run.name, None)
    assert "Merging dpo-judge" in share.start_merge(merged_run.name, "dpo-judge")
    wait_for(lambda: jobs.status(merged_run)["state"] not in ("running", "queued"))
    assert jobs.status(merged_run)["state"] == "done", jobs.status(merged_run).get("log_tail")
    assert merged_run.merged() == ["dpo-judge"]
    text, _, picker = share.stage_only(merged_run.name, "alice", "", True, False, False, True, "", True)
    assert "merged `alice/t-dpo-judge-merged`" in text and picker["choices"] == ["t-dpo-judge-merged"]
