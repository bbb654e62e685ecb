"""Experiment tracking, opt-in (train --report-to): transformers' integrations log only when asked.

Nothing here leaves the machine: the default sends nothing anywhere, TensorBoard writes files into the adapter
folder, and W&B is never started (only its refusals are tested).
"""
import importlib.util
import os

import pytest

from lab.errors import LabError
from lab.hosting import admit
from lab.hub import PushConfig, push_run
from lab.store import adapter_file
from lab.train import TrainConfig, trainer_args, train_adapter
from tests.test_train import TINY, instructions, pair, write_pairs


def test_nothing_is_reported_unless_asked(run, tmp_path):
    args = trainer_args(TrainConfig(**TINY, max_steps=1), run.adapter_dir("x"), "cpu", 4, False)
    assert args.report_to == [] and TrainConfig().report_to == "none"


def test_tensorboard_logs_into_the_adapter_folder_and_is_not_pushed(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:6]])
    out = train_adapter(run, "judge", "tb", TrainConfig(**TINY, max_steps=2, report_to="tensorboard"))
    events = sorted(adapter_file(out, "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in adapters/tb/runs/"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set only while the trainer was built
    staged = push_run(run, PushConfig(dry_run=True, datasets=False))["repos"][0]["files"]
    assert staged and not any(f.startswith("runs/") for f in staged)  # event file names hold the host name


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_refused_with_how_to_install_it():
    with pytest.raises(LabError, match="pip install wandb"):
        TrainConfig(report_to="wandb").validate()


def test_a_hosted_app_never_reports_a_visitors_training_to_the_owners_wandb(run, monkeypatch):
    monkeypatch.setenv("LAB_HOSTED", "1")
    with pytest.raises(LabError, match="reports to none, trackio or tensorboard"):
        admit("train", run.name, TrainConfig(pairs="judge", adapter="a", report_to="wandb"))
