"""Writes the bundled verifiable instruction sets: assets/checks-train.jsonl and assets/checks-heldout.jsonl.

Each line is an instruction in IFEval's format (google/IFEval: `instruction_id_list` + `kwargs`, one kwargs dict per
check), plus the lab's "id":

    {"id": "ct-001", "prompt": str, "instruction_id_list": [IFEval type, ...], "kwargs": [{...}, ...]}

A prompt is a plain task (TASKS; the held-out tasks are never used for training) followed by one or two constraints
written in words (TYPES below), checked by IFEval's own checkers (the if-verifiable package, lab.checks). The types
were picked by measuring the bundled SmolLM2-135M-Instruct on a larger pool (`--measure`): each type it passes
sometimes but not always at the lab's sampling settings, so the checks make preference pairs and a held-out accuracy
with room to move. Types whose checker needs nltk's downloadable sentence splitter (number_sentences,
capital_word_frequency) are left out: they cannot run offline.

    python scripts/make_checks_set.py              # rewrite the two asset files (deterministic: seed 0)
    python scripts/make_checks_set.py --measure    # the base model's pass rate per type on a larger pool (slow)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASKS = [
    "Describe a quiet morning in a small fishing village.", "Explain why people enjoy gardening.",
    "Give advice to someone starting their first job.", "Describe your ideal weekend.",
    "Explain how a bicycle works to a child.", "Write a short note thanking a neighbour for their help.",
    "Describe the taste of a ripe mango.", "Explain why sleep is important.",
    "Give tips for keeping a room tidy.", "Describe a thunderstorm at night.",
    "Explain what a library is for.", "Write a short story about a lost umbrella.",
    "Describe a busy train station.", "Explain how to make a cup of tea.",
    "Give reasons to learn a second language.", "Describe the sound of the ocean.",
    "Explain why recycling matters.", "Write a short welcome message for new club members.",
    "Describe a walk through an autumn forest.", "Explain how plants get water.",
    "Give advice for a long car trip.", "Describe a favourite childhood toy.",
    "Explain what makes a good friend.", "Write a short invitation to a birthday picnic.",
    "Describe the first snow of winter.", "Explain why bees are important.",
    "Give tips for studying for an exam.", "Describe a market on a Saturday morning.",
    "Explain how a compass works.", "Write a short review of an imaginary bakery.",
    "Describe a sunset over the mountains.", "Explain why people keep pets.",
    "Give advice for saving money.", "Describe an old lighthouse.", "Explain what clouds are made of.",
    "Write a short apology for arriving late.", "Describe a rainy afternoon at home.",
    "Explain how to plant a tree.", "Give tips for a job interview.", "Describe a city park in spring.",
    "Explain why the moon changes shape.", "Write a short letter to a future self.",
    "Describe a kitchen during a family dinner.", "Explain how bread is made.",
    "Give advice for learning to swim.", "Describe a desert at noon.", "Explain why exercise is healthy.",
    "Write a short speech for a school sports day.", "Describe a cat sleeping in the sun.",
    "Explain what a volcano is.", "Give tips for taking better photos.", "Describe a bridge over a river.",
    "Explain how a map helps travellers.", "Write a short poem about the wind.",
    "Describe a crowded beach in summer.", "Explain why people celebrate new year.",
    "Give advice for cooking rice.", "Describe an old bookshop.", "Explain how a rainbow forms.",
    "Write a short message to cheer up a friend.", "Describe a mountain cabin in winter.",
    "Explain why water boils.", "Give tips for a first camping trip.", "Describe a school playground.",
    "Explain what a museum does.", "Write a short note to a teacher at the end of the year.",
    "Describe a farm at sunrise.", "Explain how to care for a houseplant.",
    "Give advice for speaking in public.", "Describe a night sky full of stars.",
    "Explain why people drink coffee.", "Write a short postcard from a seaside holiday.",
    "Describe a busy restaurant kitchen.", "Explain how a clock keeps time.",
    "Give tips for staying calm under stress.", "Describe a snowy city street.",
    "Explain why trees lose their leaves.", "Write a short ad for a lemonade stand.",
    "Describe a boat on a calm lake.", "Explain how to make friends in a new town.",
]
HELDOUT_TASKS = [
    "Describe a lighthouse keeper's evening.", "What makes music enjoyable?",
    "Give advice for a first day at school.", "Describe a small island.", "Explain how a kite flies.",
    "Write a short note inviting a friend to dinner.", "Describe the smell of fresh bread.",
    "Explain why we have seasons.", "Give tips for a long flight.", "Describe a foggy harbour.",
    "What is a calendar used for?", "Write a short story about a kind stranger.",
    "Describe a quiet library.", "Explain how to make a sandwich.", "Give reasons to read books.",
    "Describe a river in spring.", "Explain why we need clean air.", "Write a short thank-you card to a nurse.",
    "Describe a garden after rain.", "Explain how birds build nests.", "What should I pack when moving house?",
    "Describe a village fair.", "Explain what makes a good meal.", "Write a short poem about the sea.",
    "Describe a windy day on a hill.", "Why do hikers love the outdoors?", "Give tips for learning to cook.",
    "Describe an old train.", "Explain how a candle burns.", "Write a short review of an imaginary cafe.",
]

# Words the keyword checks ask for: common enough for a small model to use when told to.
KEYWORDS = ["light", "water", "friend", "time", "home", "green", "small", "happy", "road", "sun", "tree", "warm"]
END_PHRASES = ["Is there anything else I can help with?", "That is all.", "Thank you for reading.", "Have a nice day."]


def _pick(rng: random.Random, items: list, n: int) -> list:
    return sorted(rng.sample(items, n))


# type -> (kwargs maker, the words that ask for it). Kwargs use IFEval's names; the words are the lab's own.
TYPES = {
    "change_case:english_lowercase": (lambda r: {}, lambda kw: "Write your whole answer in lowercase letters only."),
    "punctuation:no_comma": (lambda r: {}, lambda kw: "Do not use any commas in your answer."),
    "startend:quotation": (lambda r: {}, lambda kw: "Wrap your entire answer in double quotation marks."),
    "startend:end_checker": (lambda r: {"end_phrase": r.choice(END_PHRASES)},
                             lambda kw: f'End your answer with the exact phrase "{kw["end_phrase"]}" and nothing '
                                        "after it."),
    "keywords:existence": (lambda r: {"keywords": _pick(r, KEYWORDS, 2)},
                           lambda kw: f'Use the words "{kw["keywords"][0]}" and "{kw["keywords"][1]}" in your '
                                      "answer."),
    "keywords:frequency": (lambda r: {"keyword": r.choice(KEYWORDS), "frequency": 2, "relation": "at least"},
                           lambda kw: f'Use the word "{kw["keyword"]}" at least twice.'),
    "length_constraints:number_words": (lambda r: {"num_words": r.choice([30, 40, 50]), "relation": "less than"},
                                        lambda kw: f"Answer in fewer than {kw['num_words']} words."),
    "detectable_format:title": (lambda r: {}, lambda kw: "Give your answer a title wrapped in double angular "
                                                         "brackets, such as <<my title>>."),
    "detectable_format:number_bullet_lists": (lambda r: {"num_bullets": r.choice([2, 3])},
                                              lambda kw: f"Answer with exactly {kw['num_bullets']} bullet points, "
                                                         "each starting with '* '."),
    "detectable_content:postscript": (lambda r: {"postscript_marker": "P.S."},
                                      lambda kw: "At the end, add a postscript starting with P.S."),
    "detectable_format:number_highlighted_sections": (lambda r: {"num_highlights": 1},
                                                      lambda kw: "Highlight at least one phrase with markdown, like "
                                                                 "*this phrase*."),
    "keywords:forbidden_words": (lambda r: {"forbidden_words": _pick(r, ["the", "and", "is"], 1)},
                                 lambda kw: f'Do not use the word "{kw["forbidden_words"][0]}".'),
    "change_case:english_capital": (lambda r: {}, lambda kw: "Write your whole answer in capital letters only."),
    "detectable_format:json_format": (lambda r: {}, lambda kw: "Give your whole answer as JSON."),
    "detectable_content:number_placeholders": (lambda r: {"num_placeholders": 1},
                                               lambda kw: "Include at least one placeholder in square brackets, "
                                                          "such as [name]."),
}


def make(tasks: list[str], types: list[str], per_type: int, prefix: str, seed: int) -> list[dict]:
    """`per_type` prompts for each type, each on a task drawn in turn from a seeded shuffle of `tasks`."""
    rng = random.Random(seed)
    order = tasks[:]
    rng.shuffle(order)
    rows = []
    for n in range(per_type * len(types)):
        kind = types[(n + n // len(order)) % len(types)]  # each pass over the tasks shifts the types: no repeats
        kwargs_of, words_of = TYPES[kind]
        kwargs = kwargs_of(rng)
        rows.append({"id": f"{prefix}-{n + 1:03d}", "prompt": f"{order[n % len(order)]} {words_of(kwargs)}",
                     "instruction_id_list": [kind], "kwargs": [kwargs]})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def measure(types: list[str], per_type: int, k: int) -> dict:
    """The bundled model's pass rate per type (responses passing / responses), at the lab's sampling settings."""
    from lab import checks, models
    from lab.generation import Decoding, generate

    rows = make(TASKS + HELDOUT_TASKS, types, per_type, "m", seed=1)
    cm = models.load("bundled")
    comps = generate(cm, [r["prompt"] for r in rows], k, Decoding(0.8, 0.95, 128, 0), batch_size=64)
    rates: dict[str, list[int]] = {}
    for row, outs in zip(rows, comps):
        for c in outs:
            rates.setdefault(row["instruction_id_list"][0], []).append(checks.check(row, c.text).strict)
    return {t: round(sum(v) / len(v), 3) for t, v in rates.items()}


# Measured with --measure (8 prompts x 4 answers per type, T 0.8, top-p 0.95, 128 tokens; docs/checks.md): the types
# the bundled model passes sometimes but not always. Left out: english_lowercase, english_capital and quotation
# (never passed), title (always passed), json_format (1 of 32).
CHOSEN = [
    "punctuation:no_comma", "startend:end_checker", "keywords:existence", "keywords:frequency",
    "length_constraints:number_words", "detectable_format:number_bullet_lists", "detectable_content:postscript",
    "detectable_format:number_highlighted_sections", "keywords:forbidden_words",
    "detectable_content:number_placeholders",
]
TRAIN_PER_TYPE, HELDOUT_PER_TYPE = 12, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="measure the base model per type instead of writing")
    ap.add_argument("--per-type", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(list(TYPES), args.per_type, args.k)))
        return
    train, heldout = make(TASKS, CHOSEN, TRAIN_PER_TYPE, "ct", seed=0), make(HELDOUT_TASKS, CHOSEN, HELDOUT_PER_TYPE,
                                                                            "ch", seed=0)
    check_no_overlap(train, heldout)
    write(ROOT / "assets" / "checks-train.jsonl", train)
    write(ROOT / "assets" / "checks-heldout.jsonl", heldout)


def check_no_overlap(train: list[dict], heldout: list[dict]) -> None:
    """Refuse a held-out prompt that the comparison would drop as a (near) copy of a training one (lab.compare)."""
    from lab.compare import find_duplicates

    found = find_duplicates(heldout, {r["id"]: r["prompt"] for r in train}, 0.7)
    if found:
        raise SystemExit(f"held-out prompts that (nearly) copy training ones: {found}")


if __name__ == "__main__":
    main()
