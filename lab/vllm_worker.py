"""The vLLM side of lab.engine_vllm: runs in the vLLM virtualenv, never in the lab's.

It imports only vllm and the standard library (the lab pins a transformers that vLLM does not accept), so it shares
no code with the lab. lab/engine_vllm.py writes the request, starts `<vllm python> lab/vllm_worker.py REQUEST RESULTS`,
and reads RESULTS while this program runs. Everything runs under `if __name__ == "__main__":` because vLLM spawns
worker processes that import this file again.

REQUEST (one JSON object, written by lab/engine_vllm.py):

    {"model": str,                              # folder (or hub id) of the base model; also its tokenizer
     "dtype": str,                              # "float32" | "bfloat16" | "float16" | "auto"
     "max_model_len": int,                      # longest prompt + max tokens the engine must hold
     "seed": int,                               # engine seed (each request carries its own sampling seed too)
     "stop_token_ids": [int],                   # every end-of-turn id; the stop token is not part of the output
     "adapters": {name: folder},                # PEFT LoRA adapters, served as LoRA requests on the one base
     "max_lora_rank": int,                      # one of vLLM's allowed ranks, >= every adapter's r
     "engine_args": {},                         # extra keyword arguments for vllm.LLM (e.g. enforce_eager)
     "requests": [{"prompt_token_ids": [int], "n": int, "temperature": float, "top_p": float,
                   "max_tokens": int, "seed": int, "adapter": name | null}]}

RESULTS (JSON lines, appended and flushed as each request finishes, in finishing order):

    {"index": int,                              # position of the request in "requests"
     "completions": [{"text": str,              # decoded with skip_special_tokens, stripped (as lab.sample does)
                      "token_ids": [int],       # generated ids, without the stop token
                      "finish_reason": "stop" | "length",
                      "prompt_tokens": int, "completion_tokens": int}]}       # one per n
    ...
    {"done": true, "vllm_version": str, "import_s": float, "load_s": float, "generate_s": float, "requests": int,
     "prompt_tokens": int, "completion_tokens": int}                          # last line of a run that worked
    {"error": str, "type": str}                                               # last line of one that failed
"""
import json
import os
import sys
import time
import traceback

STARTED = time.time()  # import_s in the last line: python start to `import vllm` done

# Run as a script, this file's folder (lab/) would come first on sys.path, and its module names (config, jobs,
# models, ...) could shadow what vLLM imports. Spawned children inherit the cleaned path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def completion_record(out, prompt_len: int, stop_ids: set, decode) -> dict:
    """One vLLM CompletionOutput -> a RESULTS completion. decode(ids) -> text (the engine's own tokenizer)."""
    ids = list(out.token_ids)
    finish = "stop" if out.finish_reason == "stop" else "length"
    if finish == "stop" and ids and ids[-1] in stop_ids:
        ids = ids[:-1]  # lab.sample never keeps the end-of-turn token either
    return {"text": decode(ids).strip(), "token_ids": ids, "finish_reason": finish,
            "prompt_tokens": prompt_len, "completion_tokens": len(ids)}


def result_line(index: int, request_output, stop_ids: set, decode) -> dict:
    n = len(request_output.prompt_token_ids)
    return {"index": index, "completions": [completion_record(o, n, stop_ids, decode)
                                            for o in request_output.outputs]}


def load_engine(req: dict):
    from vllm import LLM

    # One LoRA slot more than adapters, left empty: vLLM's CPU LoRA ops (0.32) read a base request's slot index -1
    # as "the last slot", so with every slot filled the base answers with an adapter (vllm-project/vllm PR #48421).
    # Adapters take the first free slots and, with a slot each, are never evicted: the last one stays zeros.
    slots = len(req["adapters"]) + 1
    lora = {"enable_lora": True, "max_lora_rank": req["max_lora_rank"], "max_loras": slots,
            "max_cpu_loras": slots} if req["adapters"] else {}
    return LLM(model=req["model"], tokenizer=req["model"], dtype=req["dtype"], max_model_len=req["max_model_len"],
               seed=req["seed"], **lora, **req.get("engine_args", {}))


def engine_inputs(req: dict, stop_ids: list):
    """(prompts, sampling params, LoRA requests), one of each per request."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(sorted(req["adapters"].items()))}
    prompts = [{"prompt_token_ids": r["prompt_token_ids"]} for r in req["requests"]]
    params = [SamplingParams(n=r["n"], temperature=r["temperature"], top_p=r["top_p"], max_tokens=r["max_tokens"],
                             seed=r["seed"], stop_token_ids=stop_ids, detokenize=False)  # decoded once, below
              for r in req["requests"]]
    return prompts, params, [loras[r["adapter"]] if r.get("adapter") else None for r in req["requests"]]


def run(req: dict, out) -> dict:
    """Generate every request, writing each result line the moment its request finishes; returns the totals."""
    import vllm

    t0 = time.time()
    import_s = t0 - STARTED
    llm = load_engine(req)
    load_s, t1 = time.time() - t0, time.time()
    tok = llm.get_tokenizer()
    stop_ids = req["stop_token_ids"]
    prompts, params, loras = engine_inputs(req, stop_ids)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for index, output in stream(llm, prompts, params, loras):
        line = result_line(index, output, set(stop_ids), decode)
        out.write(json.dumps(line) + "\n")
        out.flush()
        totals["requests"] += 1
        totals["prompt_tokens"] += sum(c["prompt_tokens"] for c in line["completions"])
        totals["completion_tokens"] += sum(c["completion_tokens"] for c in line["completions"])
    return {"done": True, "vllm_version": vllm.__version__, "import_s": round(import_s, 2), "load_s": round(load_s, 2),
            "generate_s": round(time.time() - t1, 2), **totals}


def stream(llm, prompts, params, loras):
    """Yield (request index, RequestOutput) as requests finish: all are queued at once (one scheduler, full batches)
    and the engine is stepped here, so results leave as they complete. Without LLM.enqueue: one generate call."""
    if not hasattr(llm, "enqueue"):
        yield from enumerate(llm.generate(prompts, params, lora_request=loras, use_tqdm=False))
        return
    ids = [str(rid) for rid in llm.enqueue(prompts, params, lora_request=loras, use_tqdm=False)]
    # enqueue returns the engine's internal ids ("<id>-<8 random chars>" in vLLM 0.32); outputs carry "<id>"
    index = {key: i for i, rid in enumerate(ids) for key in (rid, rid.rsplit("-", 1)[0])}
    while llm.llm_engine.has_unfinished_requests():
        for output in llm.llm_engine.step():
            if output.finished:
                yield index[str(output.request_id)], output


def error_text(e: BaseException) -> str:
    """An exception's message on one line, without pydantic's link and input dump."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    return " ".join(ln.split(" [type=")[0] for ln in lines)[:500]


def main(request_path: str, results_path: str) -> int:
    with open(request_path, encoding="utf-8") as f:
        req = json.load(f)
    with open(results_path, "a", encoding="utf-8") as out:
        try:
            out.write(json.dumps(run(req, out)) + "\n")
            return 0
        except BaseException as e:  # the client reads this line; the traceback goes to the log
            traceback.print_exc()
            out.write(json.dumps({"error": error_text(e), "type": type(e).__name__}) + "\n")
            return 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_worker.py REQUEST.json RESULTS.jsonl")
    sys.exit(main(sys.argv[1], sys.argv[2]))
