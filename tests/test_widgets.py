"""Widgets: built only with a live frontend; the tuner's button writes the chosen schedule."""

from __future__ import annotations

import pytest
import yaml

from ruscarl_lib import widgets
from ruscarl_lib.data_io import load_sample_dataset
from ruscarl_lib.params import Params


def test_headless_gets_a_note_not_widgets(monkeypatch):
    monkeypatch.setenv("RUSCARL_HEADLESS", "1")
    assert not widgets.has_live_frontend()
    note = widgets.example_browser(load_sample_dataset(), Params())
    assert "JupyterLab" in note.data


def test_schedule_tuner_writes_what_the_controls_say(monkeypatch, tmp_path):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(widgets, "has_live_frontend", lambda: True)
    drawn = []
    box = widgets.schedule_tuner(Params(), [12, 9], tmp_path / "tuned.yaml",
                                 draw=lambda *a: drawn.append(a) or _blank())
    controls = {c.description: c for row in box.children[:2] for c in row.children}
    controls["t0"].value = 0.35
    controls["decay"].value = "linear"
    controls["G"].value = 4
    save = box.children[2].children[0]
    save.click()
    chosen = yaml.safe_load((tmp_path / "tuned.yaml").read_text())
    assert chosen["scaffold"]["t0"] == 0.35 and chosen["scaffold"]["step_decay"] == "linear"
    assert chosen["schedule_view"]["group_size"] == 4
    assert len(drawn) >= 4 and drawn[-1][1] == 4  # redrawn on every change with the new G


def _blank():
    import matplotlib.pyplot as plt

    return plt.figure()
