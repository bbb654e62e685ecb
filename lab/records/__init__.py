"""Records: one module per record kind, each holding its file's format (written down once, in its docstring), its
builder and its readers. Stages and views import records from here, never from another stage's module, so the
records sit below every stage (lab/store.py still knows every file name):

  samples      samples.jsonl: `sample_record`, `groups` (a run's samples per instruction, `Group`)
  verdicts     judgments.jsonl: the judge's calls folded into one verdict per pair (`pair_verdicts`, `run_verdicts`)
  rankings     rankings.jsonl: `ranking_record`, `latest_rankings`, `preference` (both-orders logit or reward gap)
  scores       scores.jsonl: `score_record`, `mean_scores`, `score_key` / `text_hash` (what makes two the same)
  pairs        pairs-<source>.jsonl: `pair_record`, `load_pairs` (checks a user's file), `check_markup`,
               `split_pairs`, `pair_stats`
  comparisons  compare.jsonl: `compare_record`, `current` (the latest comparison's), `grid`; notes.json: `read_notes`

Each module imports only lab.store, lab.errors, lab.stats and lab.checks (never torch, never a stage).
"""
