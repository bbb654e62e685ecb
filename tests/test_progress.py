"""Progress that tells the truth: ETA from the pace of the work (not from a phase start that included loading a
model), work inside a batch, "loading model", and the last numbers written when a stage ends."""
import json
import time

import pytest

from lab import progress as progress_mod
from lab.generation import Decoding, generate
from lab.progress import Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "time", c)
    return c


@pytest.fixture
def pfile(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("LAB_PROGRESS_FILE", str(path))
    return lambda: json.loads(path.read_text())


def test_eta_comes_from_the_pace_of_the_work_not_from_the_loading_before_it(clock, pfile):
    p = Progress("judging", quiet=True, min_interval=0)
    p.update(0, 10, "judging")
    clock.now += 60  # a local judge model loading inside the phase
    p.update(1, 10)  # the first call: the pace starts here
    clock.now += 2
    p.update(2, 10)
    assert pfile()["eta_s"] == pytest.approx(16.0)  # 8 calls left at 2 s a call, not 8 x 31 s
    clock.now += 2
    p.update(3, 10)
    assert pfile()["eta_s"] == pytest.approx(14.0)


def test_loading_is_said_and_the_phase_goes_on_after_it(clock, pfile):
    p = Progress("sample", quiet=True, min_interval=0)
    p.loading("model tiny-random")
    assert pfile() | {"updated": 0} == {"desc": "loading model tiny-random", "done": 0, "total": 0, "partial": 0.0,
                                        "loading": True, "eta_s": None, "updated": 0, "started": clock.now}
    p.update(0, 4, "sampling", partial=0.5)
    assert pfile()["desc"] == "sampling" and not pfile()["loading"] and pfile()["partial"] == 0.5
    p.loading("judge model bundled")
    p.update(1, 4)  # no desc: back to the phase it came from
    assert pfile()["desc"] == "sampling"


def test_close_writes_the_numbers_the_throttle_held_back(clock, pfile):
    p = Progress("scoring", quiet=True, min_interval=10)
    p.update(0, 6, "scoring")
    clock.now += 1
    p.update(4, 6)  # within the throttle interval: not written yet
    assert pfile()["done"] == 0
    p.close()
    assert pfile()["done"] == 4


def test_numbers_held_back_are_written_once_the_interval_passes_without_another_update(pfile):
    """A local judge's batch lands 8 results at once and then nothing for minutes: the page must show 8, not 1."""
    p = Progress("judging", quiet=True, min_interval=1.0)
    for done in range(1, 9):
        p.update(done, 16, "judging")
    assert pfile()["done"] == 1  # throttled
    deadline = time.monotonic() + 5
    while pfile()["done"] != 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pfile()["done"] == 8 and p._flusher is None
    p.update(9, 16)  # a write after the flush starts a new interval: held back again, then flushed
    p.close()
    assert pfile()["done"] == 9


def test_generation_reports_every_decode_step_of_a_batch(tiny):
    seen = []

    class Recorder(Progress):
        def update(self, done, total, desc=None, partial=0.0, **extra):
            seen.append((done, partial))

    generate(tiny, ["Say hi.", "Name a fruit."], 2, Decoding(max_new_tokens=16, seed=0), batch_size=4,
             progress=Recorder(quiet=True))
    inside = [partial for done, partial in seen if done == 0]
    assert len(inside) >= 8 and inside == sorted(inside) and 0 < inside[0] < inside[-1] <= 4
    assert seen[-1] == (4, 0.0)


def test_a_prefix_names_the_round_in_every_phase_a_loading_one_too(clock, pfile):
    p = Progress("iterate", quiet=True, min_interval=0)
    p.prefix = "round 2 · "
    p.update(3, 8, "scoring")
    assert pfile()["desc"] == "round 2 · scoring"
    p.loading("model bundled")
    assert pfile()["desc"] == "round 2 · loading model bundled" and pfile()["started"] == clock.now
    p.update(4, 8)  # back to the phase the load interrupted, named once
    assert pfile()["desc"] == "round 2 · scoring"


def test_shifted_progress_passes_the_work_inside_a_batch_on_in_the_stages_units():
    from lab.generation import ShiftedProgress
    seen = []

    class Recorder(Progress):
        def update(self, done, total, desc=None, partial=0.0, **extra):
            seen.append((done, total, desc, partial))

    shifted = ShiftedProgress(Recorder(quiet=True), 2, 8, "scoring", per_unit=3)  # 3 judgments a row
    shifted.update(4, 9, partial=1.5)  # 4 judgments made, 1.5 more in flight
    assert seen[-1] == (3, 8, "scoring", pytest.approx((1 + 1.5) / 3))


def test_a_local_judge_reports_every_decode_step_inside_a_batch():
    from lab.judge_backends import LocalBackend
    backend = LocalBackend("tiny-random", "cpu", "float32", reasoning_tokens=12, batch_size=4, min_reasoning_tokens=8)
    work = []
    verdicts = backend.judge(["Which is better, A or B?"] * 3, work.append)
    assert len(verdicts) == 3 and len(work) >= 5  # 8 steps at least before it may close
    assert work == sorted(work) and 0 < work[0] < work[-1] <= 3


def test_the_page_label_counts_work_in_flight_and_seconds_before_a_pace():
    from lab.ui.common import progress_label
    p = {"desc": "round 2 · scoring", "done": 3, "total": 8, "partial": 0.4, "eta_s": None, "started": 100.0}
    assert progress_label({"state": "running", "progress": p}, now=135.0) == "round 2 · scoring 3.4/8 · 35 s so far"
    assert progress_label({"state": "running", "progress": p | {"eta_s": 200}}, now=135.0) == \
        "round 2 · scoring 3.4/8 · about 3.3 min left"
    loading = {"desc": "round 1 · loading model bundled", "loading": True, "total": 0, "started": 100.0}
    assert progress_label({"state": "running", "progress": loading}, now=112.0) == \
        "round 1 · loading model bundled… 12 s"
    assert progress_label({"state": "done", "progress": p | {"done": 8, "partial": 0}}) == "round 2 · scoring 8/8"
    first = p | {"done": 0, "partial": 0.04, "eta_s": 600}  # a long first batch: 0.04, not a stuck-looking 0.0
    assert progress_label({"state": "running", "progress": first}, now=135.0) == \
        "round 2 · scoring 0.04/8 · about 10.0 min left"
