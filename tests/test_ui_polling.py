"""Which tab's job timer a page event starts or stops (lab.ui.shown_tab_timers); the idle page and a job followed to
its end are tests/test_browser_idle.py's, the panel after a reload tests/test_browser.py's compare test."""
import gradio as gr

from lab.ui import shown_tab_timers


def states(updates) -> list:
    """Per timer: True / False (started / stopped), or None (left as it is)."""
    return [u.get("active") if isinstance(u, dict) and u.get("__type__") == "update" else
            getattr(u, "active", None) if isinstance(u, gr.Timer) else None for u in updates]


def test_opening_a_tab_starts_its_timer_and_stops_the_others():
    timers = [gr.Timer(1, active=False) for _ in range(3)]
    assert states(shown_tab_timers(timers, timers[1])) == [False, True, False]


def test_a_run_picked_starts_the_shown_tabs_timer_and_stops_no_other():
    """The run-change event may have read a stale 'shown tab' (a tab clicked while the page load restored the run):
    stopping the others then stopped the clicked tab's, and its job panel stayed blank. It stops none."""
    timers = [gr.Timer(1, active=False) for _ in range(3)]
    out = shown_tab_timers(timers, timers[0], others=False)
    assert states(out) == [True, None, None]
    assert all(u == gr.skip() for u in out[1:])
