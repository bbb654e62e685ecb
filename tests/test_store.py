import json

import pytest

from lab.errors import LabError
from lab.store import Run, append_jsonl, read_jsonl, scrub, write_jsonl


def test_append_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3, "half')  # what a kill in the middle of a write leaves
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]  # readers skip the torn line
    append_jsonl(path, [{"a": 4}])  # the next append cuts it off instead of gluing onto it
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    assert path.read_text().count("\n") == 3


def test_torn_file_with_no_complete_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"partial"')
    append_jsonl(path, [{"ok": True}])
    assert read_jsonl(path) == [{"ok": True}]


def test_a_corrupt_middle_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(LabError, match="line 2"):
        read_jsonl(path)


def test_write_jsonl_replaces_atomically(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [{"x": 1}])
    write_jsonl(path, [{"x": 2}, {"x": 3}])
    assert read_jsonl(path) == [{"x": 2}, {"x": 3}]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("bad", ["", "..", "../etc", "a/../../b", ".hidden", "x" * 65, "sp ace", "-flag"])
def test_run_names_refuse_path_tricks(runs_dir, bad):
    with pytest.raises(LabError, match="run name"):
        Run.open(bad)


def test_run_name_resolves_under_the_runs_root(runs_dir):
    run = Run.open("my-run_1.0")
    assert run.path == runs_dir / "my-run_1.0"


def test_run_json_never_holds_a_secret(run):
    run.record_stage("judge", {"model": "m", "api_key": "gsk_secret", "nested": {"hf_token": "hf_x", "keep": 1}})
    text = (run.path / "run.json").read_text()
    assert "gsk_secret" not in text and "hf_x" not in text
    assert json.loads(text)["stages"]["judge"]["nested"] == {"keep": 1}
    assert scrub([{"Authorization": "Bearer x", "b": 2}]) == [{"b": 2}]


def test_opening_a_missing_run_without_create_says_how_to_start(runs_dir):
    with pytest.raises(LabError, match="python -m lab sample"):
        Run.open("nope", create=False)


def test_the_rounds_adapters_answer_to_their_names_beside_the_runs_own(run):
    """Chat and Compare offer iterate's round-<k> adapters (iterations/<k>/adapters/) and load them by name."""
    from lab.adapters import resolve_adapters
    from lab.store import adapter_file

    def complete(folder):
        folder.mkdir(parents=True)
        for kind in ("config", "weights"):
            adapter_file(folder, kind).write_text("{}")
        return folder

    own = complete(run.adapter_dir("dpo"))
    r1, r2 = complete(run.iteration(1).adapter_dir("round-1")), complete(run.iteration(2).adapter_dir("round-2"))
    assert run.round_adapters() == {"round-1": r1, "round-2": r2}
    assert resolve_adapters(run, "dpo,round-2") == {"dpo": own, "round-2": r2}
    with pytest.raises(LabError, match="adapters: dpo, round-1, round-2"):
        resolve_adapters(run, "round-3")
