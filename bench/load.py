"""A hosted app under load: many visitors at once, on 127.0.0.1, bounded in time.

Starts `python app.py` as a public deployment runs it (LAB_HOSTED=1, default caps, one trusted proxy hop), then
--visitors API clients at once (gradio_client), each from its own address (X-Forwarded-For, as the proxy would
write it) and with its own browser id: each starts a small sampling job (tiny-random, 2 instructions, 8 tokens) in
a run of its own, tries a second job (one per visitor), lists its runs and chats a few tokens with the base model.
Meanwhile one more client times an instant action (listing its runs) again and again. Once every accepted job has
ended, the run folders are checked: each holds its own samples, owner.json names its visitor, and no visitor's
picker lists another's run. Last, --pages pages are opened in headless Chromium (when Playwright and a Chromium are
there) and the app's CPU is measured while they sit idle.

    python bench/load.py [--visitors 20] [--pages 20] [--timeout 900]
    python bench/load.py --quick               # 4 visitors, 2 pages

The last line is one JSON object: jobs_accepted (started + queued), jobs_started, jobs_queued, jobs_refused (by
reason) against caps, second_job (each accepted visitor's second try, by outcome), jobs_done, files_intact,
only_own_runs, chats_ok, instant_p95_s, idle_cpu_pct (of one core, with the pages open; idle_cpu_pct_no_pages before
they open), wall_s, and the settings.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import hosting, limits  # noqa: E402
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402

REFUSALS = {"queue is full": "queue_full", "You already have a job": "per_visitor",
            "Two jobs from your network": "per_address", "runs on this app in the last 24 hours": "runs_cap"}


def sample_args(run: str) -> tuple:
    """The Sample tab's start form: run, model, source, upload, N, K, temperature, top-p, tokens, seed, batch,
    column."""
    return (run, "tiny-random", "bundled", None, 2, 1, 0.8, 0.95, 8, 0, 2, "")


def client(url: str, address: str):
    from gradio_client import Client

    c = Client(url, verbose=False, headers={"X-Forwarded-For": address})
    c.vid = c.predict(None, None, api_name="/arrive")[0]
    return c


def try_start(c, run: str) -> str:
    """'started' | 'queued' | a REFUSALS reason | 'other: <message>'."""
    from gradio_client.exceptions import AppError

    try:
        text = c.predict(*sample_args(run), api_name="/start_sampling")
    except AppError as e:
        return next((why for words, why in REFUSALS.items() if words in str(e)), f"other: {str(e)[:120]}")
    return "queued" if "queued" in text else "started"


def visit(url: str, i: int, out: dict) -> None:
    """One visitor: a job, a second job (refused), their run list, a short chat. An error is recorded, not raised."""
    try:
        _visit(url, i, out)
    except Exception as e:  # a figure of the load test, not its end
        out[i] = {"vid": None, "first": f"error: {type(e).__name__}: {str(e)[:120]}", "second": None, "runs": [],
                  "chat": False}


def _visit(url: str, i: int, out: dict) -> None:
    c = client(url, f"10.1.{i // 200}.{i % 200 + 1}")
    first = try_start(c, f"load-{i}")
    second = try_start(c, f"load-{i}-second") if first in ("started", "queued") else None
    runs = [x[1] if isinstance(x, (list, tuple)) else x for x in c.predict(api_name="/runs")["choices"]]
    reply = c.predict("", "base", "", "Hi", [], [], "tiny-random", "", 0.0, 1.0, 8, 0, api_name="/chat")[0]
    out[i] = {"vid": c.vid, "first": first, "second": second, "runs": runs, "chat": reply[-1]["role"] == "assistant"}


def time_instant(url: str, stop: threading.Event, took: list[float]) -> None:
    """An instant action (listing one's runs) again and again until `stop`, its latency in `took`."""
    c = client(url, "10.2.0.1")
    while not stop.is_set():
        t0 = time.perf_counter()
        c.predict(api_name="/runs")
        took.append(time.perf_counter() - t0)
        time.sleep(0.2)


def wait_for_jobs(runs: Path, names: list[str], timeout_s: float) -> int:
    """Block until every named run's job has written its exit.json (or timeout_s): -> how many did."""
    deadline = time.time() + timeout_s
    while True:
        done = sum((runs / n / "jobs" / "exit.json").exists() for n in names)
        if done == len(names) or time.time() > deadline:
            return done
        time.sleep(1)


def files_check(runs: Path, visits: dict) -> tuple[bool, bool]:
    """(each accepted run holds its 2 samples and names its visitor as owner; each picker lists only own runs)."""
    intact = own = True
    for i, v in visits.items():
        mine = [f"load-{i}"] if v["first"] in ("started", "queued") else []
        own &= set(v["runs"]) <= {f"load-{i}", f"load-{i}-second"}  # a refused claim may keep its (empty) run
        for name in mine:
            owner = json.loads((runs / name / "owner.json").read_text())["owner"]
            samples = [json.loads(line) for line in (runs / name / "samples.jsonl").read_text().splitlines()]
            intact &= owner == hosting.visitor_key("browser", v["vid"]) and len(samples) == 2
    return intact, own


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def idle_cpu(url: str, pid: int, pages: int, seconds: float = 10, settle_s: float = 15) -> float | str:
    """Percent of one core the app spends while `pages` open pages sit idle (after they settle), or why not."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(pages):
            page = browser.new_page()
            page.goto(url)
            page.get_by_role("tab", name="Sample", exact=True).wait_for(timeout=120_000)
        time.sleep(settle_s)  # each page's first looks
        before = cpu_seconds(pid)
        time.sleep(seconds)
        used = cpu_seconds(pid) - before
        browser.close()
    return round(100 * used / seconds, 2)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visitors", type=int, default=20)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for the accepted jobs")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 4 visitors, 2 pages, idle CPU over 2 s")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.visitors, args.pages = 4, 2
    env = {"LAB_HOSTED": "1", "LAB_PROXY_HOPS": "1", "SPACE_ID": "", "SYSTEM": "", "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1"}
    os.environ["LAB_HOSTED"] = "1"  # the caps below are the hosted defaults
    caps = {"queue": limits.cap("queue"), "per_visitor": 1, "per_address": 2, "runs_per_visitor": limits.cap("runs")}
    runs = Path(tempfile.mkdtemp(prefix="lab-load-")) / "runs"
    runs.mkdir()
    t0, app = time.time(), AppServer(runs, env=env)
    try:
        visits, took, stop = {}, [], threading.Event()
        timer = threading.Thread(target=time_instant, args=(app.url, stop, took))
        timer.start()
        crowd = [threading.Thread(target=visit, args=(app.url, i, visits)) for i in range(args.visitors)]
        for t in crowd:
            t.start()
        for t in crowd:
            t.join()
        accepted = [f"load-{i}" for i, v in visits.items() if v["first"] in ("started", "queued")]
        done = wait_for_jobs(runs, accepted, args.timeout)
        stop.set()
        timer.join()
        intact, own = files_check(runs, visits)
        window = 2 if args.quick else 10  # seconds the idle app's CPU is measured over (quick: a smoke figure)
        before = cpu_seconds(app.proc.pid)
        time.sleep(window)
        cpu_no_pages = round(100 * (cpu_seconds(app.proc.pid) - before) / window, 2)  # percent of a core
        cpu = idle_cpu(app.url, app.proc.pid, args.pages, window, settle_s=3 if args.quick else 15)
    finally:
        app.close()
        shutil.rmtree(runs.parent, ignore_errors=True)  # the visitors' runs: checked above, not kept
    firsts = Counter(v["first"] for v in visits.values())
    out = {"quick": args.quick, "visitors": args.visitors, "caps": caps,
           "jobs_accepted": len(accepted), "jobs_started": firsts["started"], "jobs_queued": firsts["queued"],
           "jobs_refused": {k: n for k, n in firsts.items() if k not in ("started", "queued")},
           "second_job": dict(Counter(v["second"] for v in visits.values() if v["second"])),  # none accepted
           "jobs_done": done, "files_intact": intact, "only_own_runs": own,
           "chats_ok": sum(v["chat"] for v in visits.values()),
           "instant_p95_s": round(statistics.quantiles(took, n=20)[-1], 3) if len(took) >= 2 else None,
           "instant_median_s": round(statistics.median(took), 3) if took else None, "instant_n": len(took),
           "pages": args.pages, "idle_cpu_pct": cpu, "idle_cpu_pct_no_pages": cpu_no_pages,
           "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
