"""Settings as files (lab.configfile, `--config` in lab.cli): a YAML file gives the same settings as the flags, flags
override it, run.json is enough to redo a stage, bad files get a one-line message, and a finished job in the app
offers its command line and YAML."""
import dataclasses

import pytest

from lab.cli import main, parse_args
from lab.stages import STAGES
from lab.configfile import command_line, settings_yaml
from lab import sample
from lab.sample import SampleConfig
from lab.train import TrainConfig, train_adapter
from tests.test_train import TINY, instructions, pair, write_pairs


def changed(cls):
    """Settings of `cls` with every field moved off its default (a value of the field's type, a valid choice)."""
    values = {}
    for f in dataclasses.fields(cls):
        choices, d = f.metadata.get("choices"), f.default
        if choices:
            values[f.name] = choices[-1] if choices[-1] != d else choices[0]
        elif isinstance(d, bool):
            values[f.name] = not d
        elif isinstance(d, int):
            values[f.name] = d + 3
        elif isinstance(d, float):
            values[f.name] = d * 2 + 0.25
        else:
            values[f.name] = f"{f.name}-from-test: with spaces"
    return cls(**values)


def settings_from(argv):
    args = parse_args(argv)
    return next(s for s in STAGES if s.name == args.stage).settings.from_args(args)


@pytest.mark.parametrize("stage", [s.name for s in STAGES])
def test_a_yaml_file_gives_the_same_settings_as_the_flags(stage, tmp_path):
    cls = next(s for s in STAGES if s.name == stage).settings
    want = changed(cls)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(settings_yaml(stage, "r", want), encoding="utf-8")
    from_flags = settings_from([stage, "--run", "r", *want.to_argv()])
    from_file = settings_from([stage, "--run", "r", "--config", str(path)])
    assert from_file == from_flags == want
    assert settings_from([stage, "--run", "r", "--config", str(path)]) != cls()  # the file did change something


def test_flags_given_on_the_command_line_override_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("n: 7\nk: 3\nmax-new-tokens: 64\ntemperature: 0\ntop_p:\nmodel: tiny-random\n", encoding="utf-8")
    cfg = settings_from(["sample", "--run", "r", "--config", str(path), "--k", "9", "--model", "bundled"])
    assert (cfg.n, cfg.k, cfg.max_new_tokens, cfg.model) == (7, 9, 64, "bundled")
    assert cfg.temperature == 0.0 and isinstance(cfg.temperature, float) and cfg.top_p == SampleConfig().top_p
    path.write_text("lr: 5e-5\nbeta: 1\n", encoding="utf-8")  # PyYAML reads 5e-5 (no dot) as text
    train = settings_from(["train", "--run", "r", "--config", str(path)])
    assert train.lr == 5e-5 and train.beta == 1.0


@pytest.mark.parametrize("text, message", [
    ("n: 7\nnum_samples: 3\n", "unknown setting(s) num_samples for this stage; its settings are model, instructions"),
    ("n: [1, 2]\n", "n must be a whole number (got [1, 2])"),
    ("k: five\n", "k must be a whole number (got 'five')"),
    ("n: 3\n  k: 2\n", "not valid YAML (line 2)"),
    ("- n\n- k\n", "must hold `setting: value` lines, not a list"),
])
def test_a_bad_settings_file_is_refused_in_one_line(tmp_path, runs_dir, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["sample", "--run", "r", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (runs_dir / "r").exists()


def test_run_json_is_enough_to_redo_a_run(run):
    cfg = SampleConfig(model="tiny-random", n=2, k=2, max_new_tokens=4, temperature=0.5, seed=3, batch_size=4)
    sample.run(run, cfg)
    assert settings_from(["sample", "--run", "again", "--config", str(run.file("run"))]) == cfg
    write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:4]])
    trained = TrainConfig(**TINY, max_steps=1, lora_r=4, method="orpo")
    train_adapter(run, "judge", "a", trained)
    redo = settings_from(["train", "--run", "again", "--config", str(run.file("run"))])
    assert redo == TrainConfig(**{**dataclasses.asdict(trained), "pairs": "judge", "adapter": "a",
                                  "loss_type": "orpo"})  # the loss type as trained
    with pytest.raises(Exception, match="never ran compare"):
        parse_args(["compare", "--run", "again", "--config", str(run.file("run"))])


def test_a_finished_job_offers_its_command_line_and_settings_file(tmp_path):
    pytest.importorskip("gradio")
    from lab.ui.common import redo_updates

    argv = ["sample", "--run", "demo run", *SampleConfig(n=4, model="tiny-random").to_argv()]
    assert redo_updates({"state": "running", "argv": argv})[0]["visible"] is False
    accordion, line, path = redo_updates({"state": "done", "argv": argv})
    assert accordion["visible"] is True and line == command_line(argv)
    assert line.startswith("python -m lab sample --run 'demo run' --model tiny-random")
    header = "# python -m lab sample --run 'demo run' --config sample.yaml"
    assert open(path, encoding="utf-8").read().startswith(header)
    assert settings_from(["sample", "--run", "x", "--config", path]) == SampleConfig(n=4, model="tiny-random")
