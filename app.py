"""Preference Lab's web app: `python app.py` serves it at http://127.0.0.1:7860 (on a Space, where the Space says).

It only builds the app and launches it; everything it does lives in lab/ (lab/ui/ for the tabs).
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from lab.ui import build_app, launch_kwargs  # noqa: E402

if __name__ == "__main__":
    build_app().launch(**launch_kwargs())
