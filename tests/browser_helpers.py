"""Drive the real app in headless Chromium (Debian's chromium + Playwright) for the browser tests.

The app is started as `python app.py` in a child process on a free port, with its runs in a temp folder; pages are
driven the way a person would (labels, buttons, tabs) and screenshots land in test-artifacts/ for a look afterwards.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` in a child process; `url` once it answers."""

    def __init__(self, runs_dir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(runs_dir.parent / "app.log", "w")
        full_env = {**os.environ, "LAB_RUNS_DIR": str(runs_dir), "GRADIO_SERVER_PORT": str(self.port),
                    "GRADIO_SERVER_NAME": "127.0.0.1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early; see {self.log.name}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("app did not answer")

    def log_text(self) -> str:
        """What the app has written to its log so far (stdout and stderr)."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title, exact=True).click()


def choose_run(page, name: str) -> None:
    box = page.get_by_label("Run", exact=True)
    box.click()
    box.fill(name)
    box.press("Enter")
    page.wait_for_timeout(500)


def panel(page):
    """The tab on screen: every lookup is scoped to it, since several tabs reuse a label ("Model", "Seed"...)."""
    return page.locator('[role="tabpanel"]:visible').first


def field(page, label: str):
    """An input by its label text (the label may be followed by its info line in the accessible name)."""
    return panel(page).get_by_label(re.compile(r"(^|\s)" + re.escape(label) + r"(\s|$)")).first


def pick_option(page, label: str, option: str) -> None:
    """Open a dropdown by its label and click the option whose text starts with `option`."""
    field(page, label).click()
    page.get_by_role("option", name=re.compile("^" + re.escape(option))).first.click()


def set_number(page, label: str, value) -> None:
    box = field(page, label)
    box.fill(str(value))
    box.press("Tab")


def sample_form(page, n: int, k: int, max_new_tokens: int, model: str = "tiny-random") -> None:
    """Fill the Sample tab's model and sizes (the tab open in `page`)."""
    pick_option(page, "Model", model)
    for label, value in [("Instructions (N)", n), ("Responses each (K)", k), ("Max new tokens", max_new_tokens)]:
        set_number(page, label, value)


def click(page, button: str) -> None:
    panel(page).get_by_role("button", name=button, exact=True).click()


def wait_for_text(page, text: str | re.Pattern, timeout_s: float = 180) -> None:
    """Wait until the tab on screen shows `text` (hidden tabs may hold the same words)."""
    panel(page).get_by_text(text).first.wait_for(timeout=timeout_s * 1000)


def wait_for_toast(page, text: str, timeout_s: float = 30) -> None:
    """Error messages (gr.Error) appear as toasts outside the tabs."""
    page.locator(".toast-body, [data-testid='toast-body']").get_by_text(text).first.wait_for(timeout=timeout_s * 1000)


TOAST_WATCH = """
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.toast-body, [data-testid="toast-body"]')) {
    if (!el.dataset.labSeen) { el.dataset.labSeen = '1'; window.labToast(el.innerText); }
  }
}).observe(document, {subtree: true, childList: true});
"""


def collect_toasts(context) -> list[str]:
    """Every toast any page of `context` shows from now on (reloads included), as its text."""
    seen: list[str] = []
    context.expose_function("labToast", lambda text: seen.append(text))  # a builtin method cannot be exposed
    context.add_init_script(TOAST_WATCH)
    return seen


def progress_of(page) -> tuple[float, str]:
    """(fill 0..1, label) of the job panel's bar in the tab on screen."""
    bar = panel(page).locator(".lab-progress").first
    return float(bar.get_attribute("data-fill") or 0), bar.inner_text()


def box(locator) -> dict:
    """The element's box on the page: x, y, width, height (CSS pixels)."""
    return locator.bounding_box()


def boxes(locator, selector: str) -> list[dict]:
    """The boxes (as box() gives them) of every `selector` inside `locator`, measured at one instant: a text above
    them that changes between two box() calls (a note the form's restore hides) would shift one and not the other."""
    return locator.evaluate("(e, sel) => [...e.querySelectorAll(sel)].map(c => { const r = c.getBoundingClientRect();"
                            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })", selector)
