"""Push cost: the lab's push (stage with cards, scan for secrets, upload) against a plain huggingface_hub upload.

Plain baseline: each record file -> `datasets.Dataset` -> one parquet file per configuration, then
`HfApi.upload_folder` of that folder; the adapter folder uploaded as it is. No cards, no statistics, no secret scan.
Lab: `lab.hub.push_run` on the same run. Both upload to the local Hub stand-in (tests/hubstandin.py) through
huggingface_hub's real client, one after the other in one process; each is timed best of --repeat.

The run is synthetic but sized like a real one: 200 instructions x 5 responses (~800 characters each), every pair
of responses judged in both orders (4,000 judge calls with reasoning), 200 pairs per source (judge, pairrm), and an
adapter of 45 MB (the size of LoRA r=16 on every linear layer of Llama-3.2-1B in fp32).

    python bench/hub.py [--instructions 200] [--repeat 3]
    python bench/hub.py --quick                 # a smoke test: 10 instructions, a 1 MB adapter, one push each

The last line is one JSON object: plain_s, lab_dry_run_s, lab_s, ratio_lab_vs_plain, staged_mb, and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import hub  # noqa: E402
from lab.hub import PushConfig  # noqa: E402
from lab.store import Run, append_jsonl, atomic_write_json, read_jsonl, write_jsonl  # noqa: E402
from tests.hubstandin import HubStandIn  # noqa: E402

TOKEN = "hf_benchTokenNotReal0123456789"
LORA_BYTES = 45 * 1024 * 1024
WORDS = "the model answers each question with care and some detail about why this works".split()


def _text(rng: random.Random, chars: int) -> str:
    out = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def build(run: Run, n: int, k: int = 5, adapter_bytes: int = LORA_BYTES) -> None:
    """Write a run in the documented record formats, with a real adapter_config.json and a 45 MB weights file."""
    rng = random.Random(0)
    append_jsonl(run.file("instructions"), [{"id": f"i{i}", "prompt": _text(rng, 200), "source": "bench"}
                                            for i in range(n)])
    append_jsonl(run.file("samples"), [
        {"instruction_id": f"i{i}", "sample_index": s, "prompt": "q", "text": _text(rng, 800), "model": "bundled",
         "model_path": "/cache/bundled", "decoding": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 256,
                                                      "seed": 0},
         "prompt_tokens": 50, "completion_tokens": 180, "finish_reason": "stop", "duplicate_of": None}
        for i in range(n) for s in range(k)])
    append_jsonl(run.file("judgments"), [
        {"instruction_id": f"i{i}", "a": a, "b": b, "order": o, "verdict": rng.choice("ab"),
         "reasoning": _text(rng, 300), "raw": _text(rng, 350), "backend": "groq", "model": "llama-3.3-70b-versatile",
         "prompt_hash": "ab12", "usage": {"prompt_tokens": 900, "completion_tokens": 90}}
        for i in range(n) for a in range(k) for b in range(a + 1, k) for o in ("ab", "ba")])
    for source in ("judge", "pairrm"):
        write_jsonl(run.pairs_file(source), [
            {"prompt": [{"role": "user", "content": _text(rng, 200)}],
             "chosen": [{"role": "assistant", "content": _text(rng, 900)}],
             "rejected": [{"role": "assistant", "content": _text(rng, 700)}],
             "meta": {"instruction_id": f"i{i}", "chosen_index": 0, "rejected_index": 1, "source": source}}
            for i in range(n)])
    out = run.adapter_dir("dpo")
    out.mkdir(parents=True)
    (out / "adapter_model.safetensors").write_bytes(os.urandom(adapter_bytes))
    atomic_write_json(out / "adapter_config.json", {"peft_type": "LORA", "r": 16, "lora_alpha": 32,
                                                    "base_model_name_or_path": "meta-llama/Llama-3.2-1B-Instruct",
                                                    "target_modules": "all-linear", "task_type": "CAUSAL_LM"})


def plain_push(run: Run, server: HubStandIn, work: Path) -> None:
    """The baseline: parquet per configuration with `datasets`, then upload_folder; the adapter folder as it is."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=TOKEN)
    for source in run.pair_sources():
        folder = work / f"plain-{source}"
        hub.write_parquet(read_jsonl(run.pairs_file(source)), folder / "data" / hub.SHARD)
        for kind in ("samples", "judgments"):
            hub.write_parquet(run.read(kind), folder / kind / hub.SHARD)
        api.create_repo(f"plain/{source}", repo_type="dataset", private=True, exist_ok=True)
        api.upload_folder(repo_id=f"plain/{source}", repo_type="dataset", folder_path=str(folder))
    api.create_repo("plain/dpo", private=True, exist_ok=True)
    api.upload_folder(repo_id="plain/dpo", folder_path=str(run.adapter_dir("dpo")))


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instructions", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 10 instructions, a 1 MB adapter, once")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.instructions, args.repeat = 10, 1
    adapter_bytes = 2 ** 20 if args.quick else LORA_BYTES
    os.environ["HF_HUB_OFFLINE"] = "0"  # only the stand-in on 127.0.0.1 is contacted
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False
    with tempfile.TemporaryDirectory() as tmp, HubStandIn(token=TOKEN, user="bench", orgs=("plain",)) as server:
        run = Run(Path(tmp) / "bench")
        build(run, args.instructions, adapter_bytes=adapter_bytes)
        quiet = type("Quiet", (), {"update": lambda *a, **k: None, "check_stop": lambda *a: None,
                                   "close": lambda *a: None})()
        plain = best_of(args.repeat, lambda: plain_push(run, server, Path(tmp)))
        dry = best_of(args.repeat, lambda: hub.push_run(run, PushConfig(dry_run=True, namespace="bench"),
                                                        progress=quiet))
        lab = best_of(args.repeat, lambda: hub.push_run(run, PushConfig(endpoint=server.url), token=TOKEN,
                                                        progress=quiet))
        size = sum(p.stat().st_size for p in run.file("hub").rglob("*") if p.is_file()) / 2**20
    print(f"run: {args.instructions} instructions, {args.instructions * 5} samples, {args.instructions * 20} judge "
          f"calls, 2 pair sources, {adapter_bytes / 2 ** 20:.0f} MB adapter; {size:.1f} MB staged")
    print(f"plain (parquet + upload_folder):     {plain:6.2f} s")
    print(f"lab push --dry-run (stage + cards):  {dry:6.2f} s")
    print(f"lab push (stage + scan + upload):    {lab:6.2f} s   ratio lab/plain = {lab / plain:.2f}")
    out = {"instructions": args.instructions, "adapter_mb": round(adapter_bytes / 2 ** 20, 1), "repeat": args.repeat,
           "quick": args.quick, "plain_s": round(plain, 3), "lab_dry_run_s": round(dry, 3), "lab_s": round(lab, 3),
           "ratio_lab_vs_plain": round(lab / plain, 3), "staged_mb": round(size, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
