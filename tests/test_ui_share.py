"""The Share tab: its handlers against a fixture run and the local Hub stand-in, and the tab inside the real app."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from lab.ui import share
from tests.hubstandin import HubStandIn
from tests.test_hub import TOKEN, build_run

SETTINGS = dict(namespace="alice", prefix="", private=True, datasets=True, adapters=True, iterations=True, only="")


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("SPACE_ID", raising=False)


def test_dry_run_lists_folders_and_previews_cards(run):
    build_run(run)
    text, links, picker = share.stage_only("t", **SETTINGS)
    assert "3** repos staged, nothing uploaded" in text and "`alice/t-judge`" in text
    assert links == "Nothing pushed from this run yet."
    assert picker["choices"] == ["t-judge", "t-pairrm", "t-dpo-judge"]
    card = share.card_preview("t", "t-judge")
    assert card.startswith('<div class="prose lab-card"><h1>alice/t-judge</h1>')  # opens on the card's text
    assert "<table>" in card and '<details><summary>Card metadata' in card  # the YAML header folded, at the end
    assert card.index("<details>") < card.index('<pre><code class="language-yaml">')


def test_push_with_the_machines_token_shows_links(run, online, monkeypatch):
    build_run(run)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert "HF_TOKEN" in share.who_text(None)
    with HubStandIn(token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        text, links, _ = share.push("t", **{**SETTINGS, "namespace": ""})
    assert "Pushed **3** repos as `alice`" in text
    assert f"[alice/t-judge]({server.url}/datasets/alice/t-judge)" in links and "private" in links
    assert TOKEN not in text + links
    assert share.refresh("t")[0] == links  # a reload shows the same links


def test_on_a_space_only_the_visitors_sign_in_pushes(run, online, monkeypatch):
    build_run(run)
    monkeypatch.setenv("SPACE_ID", "owner/lab")
    monkeypatch.setenv("HF_TOKEN", "hf_OWNERsSpaceSecret0123456789")
    assert "Sign in with Hugging Face" in share.who_text(None)
    with pytest.raises(gr.Error, match="Sign in with Hugging Face"):
        share.push("t", **SETTINGS)
    visitor = gr.OAuthToken(token="hf_VISITORoauthToken0123456789", scope="contribute-repos", expires_at=0)
    assert share.who_text(visitor) == "Pushing as: your Hugging Face sign-in."
    with HubStandIn(token=visitor.token, user="visitor") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        text, links, _ = share.push("t", **{**SETTINGS, "namespace": "", "only": "judge"}, oauth_token=visitor)
    assert ("dataset", "visitor/t-judge") in server.repos and visitor.token not in text + links


def test_user_mistakes_become_messages(run):
    with pytest.raises(gr.Error, match="Choose a run first"):
        share.stage_only("", **SETTINGS)
    build_run(run)
    with pytest.raises(gr.Error, match="not a valid Hub name"):
        share.stage_only("t", **{**SETTINGS, "namespace": "bad name"})
    with pytest.raises(gr.Error, match="Nothing to push"):
        share.stage_only("t", **{**SETTINGS, "datasets": False, "adapters": False})


def test_the_tab_is_in_the_app_and_its_dry_run_answers_a_client(run, monkeypatch):
    """The real app, launched on 127.0.0.1: the Share tab's dry run through gradio_client (wiring and inputs)."""
    from gradio_client import Client

    from lab.ui import TABS, build_app, launch_kwargs

    assert ("Share", "lab.ui.share") in TABS
    build_run(run)
    app = build_app()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
    try:
        client = Client(app.local_url, verbose=False)
        text, links, picker = client.predict("t", *SETTINGS.values(), api_name="/dry_run")
    finally:
        app.close()
    assert "repos staged, nothing uploaded" in text and (run.file("hub") / "t-judge" / "README.md").exists()


SPACE_PROBE = """
import json, urllib.error, urllib.request
from lab.ui import build_app, launch_kwargs
app = build_app()
app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_kwargs())
try:
    cfg = json.load(urllib.request.urlopen(app.local_url + "config"))
    values = [str(c["props"].get("value")) for c in cfg["components"]]
    try:  # the sign-in route exists; offline it cannot reach huggingface.co, so it fails after routing
        urllib.request.urlopen(app.local_url + "login/huggingface")
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    print(json.dumps({"values": values, "login_status": status}))
finally:
    app.close()
"""


@pytest.mark.slow
def test_as_a_space_the_app_shows_the_sign_in_and_serves_its_routes(runs_dir, tmp_path):
    """The app as a Space starts it (SYSTEM=spaces, SPACE_ID, the OAuth variables the Hub sets for hf_oauth)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SYSTEM": "spaces", "SPACE_ID": "owner/preference-lab", "OAUTH_CLIENT_ID": "client-id",
           "OAUTH_CLIENT_SECRET": "client-secret", "OAUTH_SCOPES": "openid profile contribute-repos",
           "OPENID_PROVIDER_URL": "https://huggingface.co", "LAB_RUNS_DIR": str(runs_dir),
           "HF_TOKEN": "hf_OWNERsSpaceSecret0123456789", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", SPACE_PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    assert "Sign in with Hugging Face" in probe["values"]
    assert any("Sign in with Hugging Face to push" in v for v in probe["values"])  # not "pushing as HF_TOKEN"
    assert probe["login_status"] != 404
    assert "hf_OWNERsSpaceSecret" not in out.stdout + out.stderr


def test_the_report_button_writes_the_report_and_shows_the_efficiency_table(run):
    build_run(run)
    table = share.efficiency_frame("t")
    assert table.empty and list(table.columns)[:3] == ["run", "stage", "name"]
    with pytest.raises(gr.Error, match="must be 0 or more"):
        share.make_report("t", -1)
    status, files, shown, preview, figures = share.make_report("t", 3)
    assert "Report written" in status and "README.md" in {Path(f).name for f in files}
    assert preview.startswith('<div class="prose lab-card">') and "<h1>" in preview  # rendered, not a download
    assert all(Path(path).suffix == ".png" and Path(path) in map(Path, files) for path, _ in figures)
    report = run.file("report")
    assert not any(Path(f).is_relative_to(run.path) for f in files)  # copies Gradio may serve, not the run's folder
    assert all(Path(f).read_bytes() == (report / Path(f).name).read_bytes() for f in files)
    table = share.efficiency_frame("t")
    assert list(table["stage"]) == ["report"] and table["wall_s"][0] > 0  # the report's own run of the stage
    assert 'class="lab-table"' in shown and "<td>report</td>" in shown  # the page's table shows the same row
