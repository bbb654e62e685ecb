"""The app's API, as gradio_client sees it: the users' actions, each under a name; nothing the page does by itself
(timers, refreshes, change handlers). The README's example runs as written."""
import time

import pytest

from lab.store import Run

USER_ACTIONS = {
    "/runs",
    "/start_sampling", "/stop_sample",
    "/start_judging", "/stop_judge", "/default_judge_prompt",
    "/start_ranking", "/stop_rank", "/make_pairs",
    "/load_pairs", "/spotcheck_first_better", "/spotcheck_second_better", "/spotcheck_tie", "/spotcheck_skip",
    "/spotcheck_previous", "/spotcheck_next",
    "/start_training", "/stop_train",
    "/start_compare", "/stop_compare", "/grid_previous", "/grid_next", "/save_note", "/save_overall_note",
    "/export_grid",
    "/start_iterate", "/stop_iterate",
    "/chat",
    "/dry_run", "/push", "/start_merge", "/stop_merge", "/write_report",
}


@pytest.fixture
def client(runs_dir):
    from gradio_client import Client

    from lab.ui import build_app, launch_kwargs

    app = build_app()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
    try:
        c = Client(app.local_url, verbose=False)
        c.app = app
        yield c
    finally:
        app.close()


def test_the_idle_queue_wakes_rarely_and_still_answers_at_once(client):
    """Gradio's queue polls every 1 ms when idle (4% of a core here); the app's polls every 50 ms (lab.ui)."""
    import gradio as gr

    from lab.ui import IDLE_POLL_S

    plain = gr.Blocks()._queue
    for name, seconds in IDLE_POLL_S.items():
        assert getattr(plain, name) < seconds == getattr(client.app._queue, name), name  # Gradio's knob, ours set
    t0 = time.perf_counter()
    for _ in range(5):
        assert "choices" in client.predict(api_name="/runs")
    assert time.perf_counter() - t0 < 5  # each call waits at most 50 ms for the queue to look


def test_view_api_lists_only_the_users_actions_all_named(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert api["unnamed_endpoints"] == {}
    named = set(api["named_endpoints"])
    assert named == USER_ACTIONS, (sorted(named - USER_ACTIONS), sorted(USER_ACTIONS - named))
    assert not any("lambda" in n or n.rstrip("0123456789").endswith("_") for n in named)  # no /lambda_15, /poll_5


@pytest.mark.slow
def test_the_readme_example_samples_and_follows_the_job(client, runs_dir):
    # as README.md "Use it from Python" shows it (tiny sizes)
    status = client.predict("api-demo", "tiny-random", "bundled", None, 2, 2, 0.8, 0.95, 8, 0, 4, "",
                            api_name="/start_sampling")
    assert "started" in status
    deadline = time.time() + 180
    while "finished" not in (text := client.predict("api-demo", api_name="/job_sample")[1]):
        assert time.time() < deadline and "failed" not in text, text
        time.sleep(1)
    assert len(Run.open("api-demo").read("samples")) == 4
