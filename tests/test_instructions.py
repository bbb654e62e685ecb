"""Instructions from where people keep them (lab.instructions): parquet and Arrow files, saved `datasets` folders,
hub data sets (offline here: their errors, and the same reader on a local folder), a column choice, and LIMA-style
conversations whose first turn is the instruction."""
import json

import pytest

from lab.cli import main
from lab.errors import LabError
from lab.instructions import load_instructions, prompt_id

PROMPTS = ["Name three rivers in Europe.", "Explain photosynthesis to a child.", "Write a haiku about rain."]
LIMA = [{"conversations": [p, f"An answer to: {p}", "A follow-up question?", "Another answer."], "source": "test"}
        for p in PROMPTS]  # LIMA's rows: the turns as strings, the user's first


def write_parquet(path, columns: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def prompts(items):
    return [i.prompt for i in items]


def test_parquet_rows_give_the_expected_instructions(tmp_path):
    plain = write_parquet(tmp_path / "plain.parquet", {"prompt": PROMPTS, "answer": ["a", "b", "c"]})
    items = load_instructions(str(plain))
    assert prompts(items) == PROMPTS and [i.id for i in items] == [prompt_id(p) for p in PROMPTS]
    assert {i.source for i in items} == {"plain.parquet"}
    other = write_parquet(tmp_path / "q.parquet", {"question": PROMPTS, "instruction": ["x", "y", "z"]})
    assert prompts(load_instructions(str(other))) == ["x", "y", "z"]  # "instruction" is a known column name
    assert prompts(load_instructions(str(other), n=2, column="question")) == PROMPTS[:2]
    with pytest.raises(LabError, match="has no column 'text'; its columns are question, instruction: pass one"):
        load_instructions(str(other), column="text")
    none = write_parquet(tmp_path / "none.parquet", {"question": PROMPTS})
    with pytest.raises(LabError, match=r"none of the columns prompt, .* \(its columns: question\)"):
        load_instructions(str(none))


def test_lima_rows_give_their_first_turn_from_every_kind_of_file(tmp_path):
    import datasets

    jsonl = tmp_path / "train.jsonl"  # LIMA's own file
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in LIMA), encoding="utf-8")
    table = datasets.Dataset.from_list(LIMA)
    parquet = tmp_path / "lima.parquet"
    table.to_parquet(str(parquet))
    saved = tmp_path / "lima-saved"
    datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(str(saved))
    arrow = next((tmp_path / "lima-saved" / "train").glob("*.arrow"))  # datasets' own Arrow stream file
    for source in (jsonl, parquet, saved, arrow):
        assert prompts(load_instructions(str(source))) == PROMPTS, source
    single = tmp_path / "one-split"
    table.save_to_disk(str(single))
    assert prompts(load_instructions(str(single), n=1)) == PROMPTS[:1]


def test_chat_messages_give_the_first_user_turn_and_bad_cells_say_what_to_do(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p},
                          {"role": "assistant", "content": "ok"}]} for p in PROMPTS]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert prompts(load_instructions(str(path))) == PROMPTS
    bad = write_parquet(tmp_path / "bad.parquet", {"prompt": [[1, 2], [3]]})
    with pytest.raises(LabError, match="row 1 of column 'prompt'.*Pick another column with --instruction-column"):
        load_instructions(str(bad))
    folder = tmp_path / "not-a-dataset"
    folder.mkdir()
    with pytest.raises(LabError, match="not a saved data set"):
        load_instructions(str(folder))
    garbage = tmp_path / "x.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(LabError, match="cannot be read as parquet"):
        load_instructions(str(garbage))


def test_a_hub_data_set_that_cannot_be_reached_is_a_clear_error():
    with pytest.raises(LabError, match="Could not load the data set someone/prompts from the Hugging Face Hub"):
        load_instructions("hub:someone/prompts:train")  # HF_DATASETS_OFFLINE=1 in the tests
    with pytest.raises(LabError, match="write a hub data set as hub:owner/name"):
        load_instructions("hub:not a repo")


def test_the_sample_stage_reads_a_parquet_column_given_on_the_command_line(run, tmp_path):
    path = write_parquet(tmp_path / "mine.parquet", {"question": PROMPTS[:2], "prompt": ["no", "nope"]})
    argv = ["sample", "--run", run.name, "--model", "tiny-random", "--instructions", str(path), "--instruction-column",
            "question", "--k", "1", "--max-new-tokens", "2"]
    assert main(argv) == 0
    assert [i["prompt"] for i in run.read("instructions")] == PROMPTS[:2]
    assert run.stage_settings("sample")["instruction_column"] == "question"


def test_a_csv_without_the_named_column_lists_its_columns_and_does_not_repeat_the_advice_taken(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question\nWhat is DPO?\n", encoding="utf-8")
    with pytest.raises(LabError, match=r"no 'prompt' column \(found: question\): pass one of them as "
                                       r"--instruction-column \(not 'prompt'\)"):
        load_instructions(str(path), None, 0, "prompt")
    with pytest.raises(LabError, match="add a header row with a column named prompt, or pass the column as"):
        load_instructions(str(path))
    assert [i.prompt for i in load_instructions(str(path), None, 0, "question")] == ["What is DPO?"]
