"""Widgets: built only with a live frontend; the tuner's button writes the chosen schedule."""

from __future__ import annotations

import pytest
import yaml

from ruscarl_lib.notebook import widgets
from ruscarl_lib.data.read import load_sample_dataset
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


def test_written_schedule_has_the_controls_rounding_not_float_noise(monkeypatch, tmp_path):
    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(widgets, "has_live_frontend", lambda: True)
    box = widgets.schedule_tuner(Params(), [12], tmp_path / "tuned.yaml", draw=lambda *a: _blank())
    controls = {c.description: c for row in box.children[:2] for c in row.children}
    # values as a browser slider delivers them: the log slider's 10**2.1, binary float steps
    controls["alpha"].value = 10 ** 2.1
    controls["power n"].value = 1.9999999999999998
    controls["t0"].value = 0.1 + 0.2
    box.children[2].children[0].click()
    text = (tmp_path / "tuned.yaml").read_text()
    chosen = yaml.safe_load(text)["scaffold"]
    assert chosen["alpha"] == 126.0 and chosen["power"] == 2.0 and chosen["t0"] == 0.3
    assert "125.89" not in text and "1.99999" not in text and "0.30000" not in text


def test_round_to_step():
    assert widgets.round_to_step(0.30000000000000004, 0.01) == 0.3
    assert widgets.round_to_step(0.123456, 0.05) == 0.1
    assert widgets.round_to_step(2.74, 0.5) == 2.5
    assert widgets.round_to_step(7, 1) == 7.0
