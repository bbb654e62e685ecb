"""Training methods beyond DPO (lab.methods): KTO, SimPO and ORPO through TRL, on tiny-random.

Each trains a couple of steps, writes an adapter that loads and changes the model, logs its own metrics, and its card
names it. KTO's rows come from pairs (one desirable, one undesirable) with spot-check verdicts as labels.
"""
from pathlib import Path

import pytest

from lab.adapters import read_metrics, read_state
from lab.errors import LabError
from lab.methods import METHODS, unpaired_rows
from lab.spotcheck import label_pairs
from lab.train import TrainConfig, train_adapter
from tests.test_train import TINY, instructions, load_with_adapter, pair, write_pairs


@pytest.fixture
def pairs(run):
    return write_pairs(run.pairs_file("judge"), [pair(i) for i in instructions("train")[:8]])


def logits_gap(model, tok) -> float:
    """Largest |logit difference| between the adapter on and off, on one chat prompt."""
    import torch

    ids = tok("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    with torch.no_grad():
        on = model(**ids).logits
        with model.disable_adapter():
            off = model(**ids).logits
    return float((on - off).abs().max())


@pytest.mark.parametrize("method", ["kto", "simpo", "orpo"])
def test_each_method_trains_and_its_adapter_loads_and_differs_from_the_base(run, pairs, method):
    out = train_adapter(run, "judge", f"a-{method}", TrainConfig(**TINY, method=method, max_steps=2))
    state = read_state(out)
    assert state["status"] == "done" and state["global_step"] == 2 and state["method"] == method
    assert state["settings"]["loss_type"] == METHODS[method].loss_types()[0]  # "" was recorded as what trained
    model, tok = load_with_adapter("tiny-random", out)
    assert logits_gap(model, tok) > 1e-6
    train = [m for m in read_metrics(out) if m["split"] == "train"]
    own = {k for keys in METHODS[method].plots.values() for k in keys}
    assert own <= set(train[-1]), own - set(train[-1])  # every metric its plots draw is logged
    card = (out / "README.md").read_text(encoding="utf-8")
    assert METHODS[method].label in card and f"- {method}" in card  # intro and the card's tags
    assert run.stage_settings("train")["method"] == method


def test_reference_free_methods_get_no_reference_precompute_and_kto_takes_one_loss():
    from lab.train import trainer_args

    simpo = TrainConfig(method="simpo", epochs=3.0).validate()  # precompute_ref on (the default): nothing to do
    assert not hasattr(trainer_args(simpo, Path("/tmp/unused"), "cpu", 16, False), "precompute_ref_log_probs")
    assert trainer_args(TrainConfig(method="kto", epochs=3.0), Path("/tmp/unused"), "cpu", 16,
                        False).precompute_ref_log_probs is True
    with pytest.raises(LabError, match="takes one of kto, apo_zero_unpaired"):
        TrainConfig(method="kto", loss_type="kto,apo_zero_unpaired").validate()
    with pytest.raises(LabError, match="--method orpo takes one of orpo"):
        TrainConfig(method="orpo", loss_type="sigmoid").validate()
    assert TrainConfig(method="dpo", loss_type="sigmoid,sft").validate().losses() == ["sigmoid", "sft"]
    assert TrainConfig(method="kto").losses() == ["kto"] and TrainConfig().losses() == ["sigmoid"]


def test_kto_rows_are_one_desirable_and_one_undesirable_per_pair_with_spotcheck_verdicts_as_labels(run):
    rows = [pair(i) for i in instructions("train")[:3]]
    for n, r in enumerate(rows):
        r["meta"].update(chosen_index=2 * n + 1, rejected_index=0)  # chosen has the larger index: canonical "b"
    verdicts = [{"instruction_id": rows[0]["meta"]["instruction_id"], "a": 0, "b": 1, "human": "a"},  # rejected won
                {"instruction_id": rows[1]["meta"]["instruction_id"], "a": 0, "b": 3, "human": "tie"},
                {"instruction_id": rows[2]["meta"]["instruction_id"], "a": 0, "b": 5, "human": "skip"}]
    run.append("spotcheck", [{**v, "judge": "b", "time": "t"} for v in verdicts])  # lab.spotcheck's lines
    labelled = label_pairs(run, rows)
    assert [r["meta"].get("human") for r in labelled] == ["rejected", "tie", None]
    kto = unpaired_rows(labelled)
    text = lambda r: r["completion"][0]["content"]  # noqa: E731
    assert [r["label"] for r in kto] == [True, False, True, False]  # the tie's pair is dropped
    assert text(kto[0]) == rows[0]["rejected"][0]["content"] and text(kto[1]) == rows[0]["chosen"][0]["content"]
    assert text(kto[2]) == rows[2]["chosen"][0]["content"] and kto[2]["prompt"] == rows[2]["prompt"]
    assert unpaired_rows(rows)[0]["completion"] == rows[0]["chosen"]  # no verdicts: chosen is the desirable one
