"""The demo's command line (``python -m app``) without a server: what it asks Gradio for."""

from __future__ import annotations

import os
import sys


def test_demo_launch_binds_loopback_and_never_shares(monkeypatch):
    """``python -m app --export=DIR`` with default flags: server_name 127.0.0.1, share=False."""
    import types

    import app
    from app import __main__ as app_main
    from app import runtime

    launched = {}

    class Demo:
        local_url = "http://127.0.0.1:7860/"

        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            launched.update(kwargs)

        def block_thread(self):
            launched["blocked"] = True

    class Bundle:
        def __init__(self, path):
            self.path, self.name = path, "fake"

        def warm_up(self):
            pass

    for name in ("GRADIO_ANALYTICS_ENABLED", "TF_CPP_MIN_LOG_LEVEL"):  # main() sets them; restore them after
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    fake_ui = types.SimpleNamespace(build=lambda primary, compare: Demo(), CSS="")
    monkeypatch.setattr(runtime, "check_bundle", lambda path: path)
    monkeypatch.setattr(runtime, "Bundle", Bundle)
    monkeypatch.setitem(sys.modules, "app.ui", fake_ui)
    monkeypatch.setattr(app, "ui", fake_ui, raising=False)
    assert app_main.main(["--export=/some/bundle"]) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    assert launched["inbrowser"] is False
    assert launched["quiet"] is True and launched["blocked"]  # no "set share=True" advice; serves until stopped
