"""Caps on what a job may ask for (lab.limits), checked before anything is written; K split across batches."""
from __future__ import annotations

from lab import sample
from lab.cli import main
from lab.config import SampleConfig
from lab.sample import Decoding, _plan_batches, generate, sample_run
from lab.store import Run


# ---- K across batches -----------------------------------------------------------------------------------------------
def test_k_larger_than_the_batch_is_split_across_batches():
    """K=200 at batch size 4 used to be one batch of 200 rows; now no batch holds more than 4, every sample index of
    every prompt is planned exactly once, and units that fit are packed as before."""
    encoded = [[1] * 5, [1] * 3]
    batches = list(_plan_batches([(0, list(range(200))), (1, list(range(200)))], encoded, 4))
    assert max(sum(len(idx) for _, idx in b) for b in batches) == 4
    for prompt in (0, 1):
        planned = [j for b in batches for i, idx in b if i == prompt for j in idx]
        assert planned == list(range(200))
    assert list(_plan_batches([(0, [0, 1]), (1, [0, 1])], encoded, 4)) == [[(1, [0, 1]), (0, [0, 1])]]


def test_sampling_k_above_the_batch_size_keeps_batches_small_and_seeded(runs_dir, tmp_path, tiny, monkeypatch):
    rows = []
    real = sample.generate_batch

    def counting(cm, prompts, counts, dec, gen):  # the real generator, with the rows of each batch written down
        rows.append(sum(counts))
        return real(cm, prompts, counts, dec, gen)

    monkeypatch.setattr(sample, "generate_batch", counting)
    src = tmp_path / "p.txt"
    src.write_text("Name a colour.\nName a fruit.\n")
    cfg = SampleConfig(model="tiny-random", instructions=str(src), n=2, k=10, max_new_tokens=6, batch_size=4,
                       temperature=1.0, top_p=1.0)
    first = sample_run(Run.open("one"), cfg)
    assert first["samples"] == 20 and max(rows) <= 4
    sample_run(Run.open("two"), cfg)
    texts = [[s["text"] for s in Run.open(name).read("samples")] for name in ("one", "two")]
    assert texts[0] == texts[1]  # same seed, batch size and instructions: the same samples


def test_generate_draws_each_part_of_a_split_prompt_afresh(tiny):
    """The parts of one prompt's K in different batches must not share the RNG stream (they would repeat samples)."""
    out = generate(tiny, ["Tell me something."], 8, Decoding(temperature=1.0, top_p=1.0, max_new_tokens=6),
                   batch_size=4)[0]
    assert len(out) == 8 and [c.text for c in out[:4]] != [c.text for c in out[4:]]


def test_an_absurd_k_is_refused_before_anything_is_written(runs_dir, capsys):
    """--k 100000000 used to write k into run.json, then allocate 563 GB and die with a traceback."""
    assert main(["sample", "--run", "huge", "--model", "tiny-random", "--n", "1", "--k", "5000",
                 "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "--k 5000 is more than 1000 responses per instruction" in err and "Traceback" not in err
    assert not (runs_dir / "huge").exists()
