"""The steps of bench/gpu.sh: one CUDA machine, random weights of real shapes, every figure in one JSON line.

    python bench/gpu_steps.py --out DIR                 # every step (what bench/gpu.sh runs after its set-up)
    python bench/gpu_steps.py --out DIR --dry-run       # the same steps at tiny sizes, on CPU where there is no GPU
    python bench/gpu_steps.py --out DIR --step sample   # one step (the driver runs each so, as a child process)

Steps, in order (each a child process with its own timeout, all inside --budget-s; a step that fails or runs out of
time is reported with its error and the others still run):
  models  a random model with Llama-3.2-1B's shapes (16 layers, 2048 wide, GQA 32/8, vocabulary 128,256, tied
          embeddings) and a chat tokenizer trained here (byte-level BPE on the bundled instructions, ChatML template,
          its vocabulary filled up to the model's so every sampled id decodes to a word): no hub needed
  sample  bench/sample.py on it: the lab's sampler vs plain `generate` batched over the prompts
  dpo     bench/train.py: the lab's DPO training vs a plain TRL DPOTrainer script (s/step, peak memory)
  rank    bench/rank.py: the lab's PairRM ranker vs llm-blender's rank, on a random model of PairRM's shape
  recipe  the README's CLI recipe end to end at small sizes on the model: sample, judge (local), rank, pairs, train
          two adapters, compare, iterate one round (each command timed)
  vllm    vLLM (lab.engine_vllm) on the same prompts as `sample`, where vLLM is set up (else skipped, with why)
The last line is one JSON object: each step's figures or error, the headline ratios, the machine, the set-up.
--dry-run (--quick) shrinks every size, so the CPU-able parts run anywhere in minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

STEPS = ("models", "sample", "dpo", "rank", "recipe", "vllm")
CAPS_S = {"models": 120, "sample": 120, "dpo": 200, "rank": 150, "recipe": 300, "vllm": 300}  # per step, at most
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0,
                tie_word_embeddings=True)
TINY = dict(vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
SIZES = {  # real: what an H100-class GPU does within the budget; dry: seconds on a CPU
    "real": {"shape": LLAMA_1B, "n": 32, "k": 5, "tokens": 256, "batch": 160,
             "dpo": ["--mode", "cuda", "--steps", "20", "--repeats", "1"], "rank": ["--cuda", "--n", "8"],
             "recipe": {"n": 8, "k": 4, "tokens": 64, "reasoning": 16, "steps": 4, "eval_n": 4, "judge_tokens": 32}},
    "dry": {"shape": TINY, "n": 2, "k": 2, "tokens": 8, "batch": 4,
            "dpo": ["--mode", "cpu", "--quick"], "rank": ["--quick"],
            "recipe": {"n": 3, "k": 3, "tokens": 8, "reasoning": 4, "steps": 1, "eval_n": 1, "judge_tokens": 8}},
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
          "You are a helpful AI assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")


# ---- the model: random weights of a real shape, a tokenizer made here ---------------------------------------------
def corpus() -> list[str]:
    """What the tokenizer learns from: the bundled and held-out instructions, the lab's judge and score prompts,
    and "Score: d" often enough that every digit after "Score: " gets one token (lab.score.digit_tokens)."""
    from lab.instructions import load_instructions
    from lab.judge import DEFAULT_TEMPLATE
    from lab.score import SCORE_PROMPT

    texts = [i.prompt for i in load_instructions("bundled") + load_instructions("heldout")]
    return texts + [DEFAULT_TEMPLATE, SCORE_PROMPT] * 20 + [f"Score: {d}\nScore: {d}/5" for d in range(10)] * 200


def chat_tokenizer(vocab_size: int):
    """A byte-level BPE chat tokenizer (ChatML, end of turn <|im_end|>, pad <|endoftext|>) trained on corpus(), its
    vocabulary filled with words " zq<n>" up to vocab_size: a random model samples any id, and each must decode."""
    from tokenizers import Tokenizer, decoders, models as tm, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(tm.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=min(vocab_size, 4000), special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(bpe.to_str())
    vocab, n = spec["model"]["vocab"], 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"\u0120zq{n}", len(vocab))  # \u0120 is byte-level BPE's space
        n += 1
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def build_model(folder: Path, shape: dict, device: str) -> dict:
    """Random weights of `shape` (bf16 on CUDA, fp32 on CPU) + chat_tokenizer, saved as a checkpoint folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chat_tokenizer(shape["vocab_size"])
    config = LlamaConfig(**shape, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.2 B parameters on the GPU takes seconds, on a CPU minutes
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if device.startswith("cuda") else torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "vocab": len(tok),
            "folder": str(folder)}


# ---- the steps (each runs in its own child process) --------------------------------------------------------------
def load_bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_models(out: Path, size: dict, device: str) -> dict:
    return build_model(out / "models" / "llama", size["shape"], device)


def model_folder(out: Path) -> str:
    folder = out / "models" / "llama"
    if not (folder / "config.json").exists():
        raise RuntimeError("no model: the models step did not finish")
    return str(folder)


def step_sample(out: Path, size: dict, device: str) -> dict:
    return load_bench("sample").main(["--model", model_folder(out), "--n", str(size["n"]), "--k", str(size["k"]),
                                      "--max-new-tokens", str(size["tokens"]), "--batch-size", str(size["batch"]),
                                      "--no-loop"])


def step_dpo(out: Path, size: dict, device: str) -> dict:
    folder = model_folder(out)
    where = ["--model-folder", folder] if "cuda" in size["dpo"] else ["--cpu-model", folder]
    proc = subprocess.run([sys.executable, str(BENCH / "train.py"), *size["dpo"], *where], cwd=ROOT,
                          capture_output=True, text=True, env=lab_env(out))
    if proc.returncode:
        raise RuntimeError(f"bench/train.py exited {proc.returncode}: {tail(proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_rank(out: Path, size: dict, device: str) -> dict:
    return load_bench("rank").main(size["rank"])


class Recipe:
    """The README's recipe as a user types it, command after command, each timed; a failure raises (the commands
    after it need its files)."""

    def __init__(self, out: Path):
        self.out, self.times, self.start = out, {}, time.perf_counter()

    def lab(self, *argv: str) -> dict:
        """`python -m lab ARGV --run demo` -> the summary it prints (JSON)."""
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "lab", *argv, "--run", "demo"], cwd=ROOT, capture_output=True,
                              text=True, env=lab_env(self.out))
        if proc.returncode:
            raise RuntimeError(f"`python -m lab {' '.join(argv)}` exited {proc.returncode} after "
                               f"[{', '.join(self.times) or 'nothing'}]: {tail(proc.stderr, 800)}")
        self.times[f"{len(self.times) + 1}_{argv[0]}"] = round(time.perf_counter() - t, 1)
        lines = proc.stdout.splitlines()  # the summary is the last object, printed from a line "{" to a line "}"
        starts = [n for n, line in enumerate(lines) if line == "{"]
        return json.loads("\n".join(lines[starts[-1]:])) if starts else {}


def step_recipe(out: Path, size: dict, device: str) -> dict:
    """sample, judge (local), rank (a random PairRM), pairs from both, a DPO adapter on each, compare, one
    self-rewarding round, at small sizes, with the lab's engine (vLLM is its own step). A random model's judge
    decides (almost) nothing, as the tests found on tiny-random: its verdicts are ties or follow the position, so
    the judge adapter is trained only where its pairs exist, and how many there were is reported."""
    folder, c, r = model_folder(out), size["recipe"], Recipe(out)
    small = ["--max-new-tokens", str(c["tokens"]), "--engine", "lab"]
    train = ["--max-steps", str(c["steps"]), "--batch-size", "2", "--eval-fraction", "0"]
    r.lab("sample", "--model", folder, "--instructions", "bundled", "--n", str(c["n"]), "--k", str(c["k"]), *small)
    r.lab("judge", "--backend", "local", "--model", folder, "--reasoning-tokens", str(c["reasoning"]))
    r.lab("rank", "--ranker", "tiny-random")
    judge_pairs = r.lab("pairs", "--source", "judge").get("pairs", 0)
    pairrm_pairs = r.lab("pairs", "--source", "pairrm").get("pairs", 0)
    adapters = [name for name, n in (("dpo-judge", judge_pairs), ("dpo-pairrm", pairrm_pairs)) if n]
    for name in adapters:
        r.lab("train", "--pairs", name.split("-")[1], "--adapter", name, *train)
    if not adapters:
        raise RuntimeError("neither the judge nor PairRM gave a pair to train on")
    r.lab("compare", "--adapters", ",".join(adapters), "--n", str(c["eval_n"]), *small)
    r.lab("iterate", "--rounds", "1", "--samples", "2", "--evaluations", "1", "--judge-tokens", str(c["judge_tokens"]),
          "--eval-n", str(c["eval_n"]), "--max-steps", str(c["steps"]), "--train-batch-size", "2", *small)
    return {"recipe_wall_s": round(time.perf_counter() - r.start, 1), "command_s": r.times,
            "judge_pairs": judge_pairs, "pairrm_pairs": pairrm_pairs, "adapters": adapters}


def step_vllm(out: Path, size: dict, device: str) -> dict:
    """vLLM on the sample step's prompts and settings; skipped (with why) where it is not set up."""
    from lab import engine_vllm, models
    from lab.generation import Decoding
    from lab.instructions import load_instructions

    ok, why = engine_vllm.available()
    if not ok:
        return {"skipped": why}
    cm = models.load_chat_tokenizer(model_folder(out))
    prompts = [cm.encode_prompt(i.prompt) for i in load_instructions("bundled", size["n"])]
    info: dict = {}
    t = time.perf_counter()
    engine_vllm.generate(cm.path, prompts, size["k"], Decoding(0.8, 0.95, size["tokens"], 0), cm.eos_ids, info=info)
    return {"vllm_tok_s": round(info["completion_tokens"] / info["generate_s"], 1), "vllm_load_s": info["load_s"],
            "vllm_call_s": round(time.perf_counter() - t, 1), "vllm_version": info["vllm_version"], "where": why}


STEP_FNS = {"models": step_models, "sample": step_sample, "dpo": step_dpo, "rank": step_rank,
            "recipe": step_recipe, "vllm": step_vllm}


def lab_env(out: Path) -> dict:
    """The environment of the lab's commands: offline, runs under --out, no progress bars. The lab's model cache
    (LAB_CACHE, else ~/.cache/preference-lab) stays the machine's own, as for any lab command: the bundled model is
    converted once per machine, not once per bench run (a fresh cache cost every dry run ~15 s of conversion)."""
    return {**os.environ, "LAB_RUNS_DIR": str(out / "runs"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def tail(text: str, chars: int = 1500) -> str:
    """The end of a child's stderr, without progress-bar noise: where its error is."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip() and "it/s]" not in ln and "s/it]" not in ln]
    return "\n".join(lines)[-chars:]


# ---- the driver ----------------------------------------------------------------------------------------------------
def run_step(name: str, args, deadline: float) -> dict:
    """One step in a child process, within its cap and what is left of the budget. -> its figures, or {"error"}."""
    left = deadline - time.monotonic()
    if left < 15:
        return {"error": f"not run: {max(left, 0):.0f} s of the {args.budget_s:.0f} s budget left"}
    if name == "vllm" and args.vllm_setup_rc:
        why = wait_vllm_setup(Path(args.vllm_setup_rc), deadline - 60)
        if why:
            return {"skipped": why}
    cmd = [sys.executable, __file__, "--step", name, "--out", args.out, *(["--dry-run"] if args.dry_run else [])]
    timeout = min(CAPS_S[name] * (3 if args.dry_run else 1), deadline - time.monotonic())
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=lab_env(Path(args.out)))
    except subprocess.TimeoutExpired as err:
        return {"error": f"timed out after {timeout:.0f} s: {tail(err.stderr if isinstance(err.stderr, str) else '')}"}
    log = Path(args.out) / f"{name}.log"
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    lines = proc.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exited {proc.returncode} without its JSON line: {tail(proc.stderr)}"}
    return {**found, "step_s": round(time.perf_counter() - t, 1)}


def wait_vllm_setup(rc_file: Path, until: float) -> str | None:
    """Wait for bench/gpu.sh's background vLLM set-up; None when it succeeded, else why vLLM is skipped."""
    while not rc_file.exists() and time.monotonic() < until:
        time.sleep(2)
    if not rc_file.exists():
        return "the vLLM set-up (scripts/setup-vllm.sh) was still running when the budget ran out"
    rc = rc_file.read_text().strip()
    if rc != "0":
        log = rc_file.with_suffix(".log")
        return f"the vLLM set-up failed (exit {rc}): {tail(log.read_text() if log.exists() else '', 600)}"
    return None


def machine() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count()}


def headline(steps: dict) -> dict:
    """The figures the issue asks for, flat, from the steps' own JSON (None where a step did not give them)."""
    s, d, r, v = (steps.get(k, {}) for k in ("sample", "dpo", "rank", "vllm"))
    lab_rate = s.get("lab_tok_s")
    return {"sample_lab_tok_s": lab_rate, "sample_hf_batched_tok_s": s.get("hf_batched_tok_s"),
            "sample_ratio_vs_hf_batched": s.get("ratio_vs_hf_batched"),
            "sample_vllm_tok_s": v.get("vllm_tok_s"),
            "sample_ratio_lab_vs_vllm": round(lab_rate / v["vllm_tok_s"], 3) if lab_rate and v.get("vllm_tok_s")
            else None,
            "dpo_s_per_step_lab": d.get("lab", {}).get("s_per_step"),
            "dpo_s_per_step_trl": d.get("plain_trl", {}).get("s_per_step"),
            "dpo_ratio_s_per_step": d.get("ratio_s_per_step"), "dpo_peak_gib_lab": d.get("lab", {}).get("peak_gib"),
            "dpo_peak_gib_trl": d.get("plain_trl", {}).get("peak_gib"), "dpo_ratio_peak_memory":
            d.get("ratio_peak_memory"), "rank_ratio_wall": r.get("ratio_wall_wide"),
            "rank_s_per_instr_lab": r.get("s_per_instr_lab_wide"),
            "rank_s_per_instr_blender": r.get("s_per_instr_blender_wide"),
            "recipe_wall_s": steps.get("recipe", {}).get("recipe_wall_s")}


def drive(args) -> dict:
    start = time.monotonic()
    deadline = start + args.budget_s
    Path(args.out).mkdir(parents=True, exist_ok=True)
    steps = {}
    for name in STEPS:
        steps[name] = run_step(name, args, deadline)
        print(f"{name}: {json.dumps(steps[name])[:400]}", file=sys.stderr, flush=True)
    setup = json.loads(Path(args.setup_json).read_text()) if args.setup_json and Path(args.setup_json).exists() else {}
    errors = {k: v["error"] for k, v in steps.items() if "error" in v}
    errors.update({f"setup_{k}": v for k, v in setup.get("errors", {}).items()})
    return {"gpu_bench": True, "dry_run": args.dry_run, "quick": args.dry_run, **machine(), "budget_s": args.budget_s,
            "steps_wall_s": round(time.monotonic() - start, 1), **headline(steps), "errors": errors,
            "setup": setup, "steps": steps}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for the model, runs and logs (default: a new temp one)")
    ap.add_argument("--dry-run", "--quick", dest="dry_run", action="store_true",
                    help="tiny sizes; CPU where there is no GPU")
    ap.add_argument("--step", choices=STEPS, help="run this one step here (the driver's child)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="all steps together, seconds (default 8 minutes)")
    ap.add_argument("--setup-json", default="", help="bench/gpu.sh's set-up record, merged into the output")
    ap.add_argument("--vllm-setup-rc", default="", help="file the background vLLM set-up writes its exit code to")
    return ap


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    args = parser().parse_args(argv)
    args.out = args.out or tempfile.mkdtemp(prefix="gpu-bench-")
    out = run_here(args) if args.step else drive(args)
    print(json.dumps(out))
    return out


def run_here(args) -> dict:
    """One step in this process: its figures, or {"error": what went wrong} (the traceback goes to stderr)."""
    import traceback

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return STEP_FNS[args.step](Path(args.out), SIZES["dry" if args.dry_run else "real"], device)
    except Exception as err:  # any failure is this step's figure: the driver reports it and runs the next step
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"[-2000:]}


if __name__ == "__main__":
    main()
