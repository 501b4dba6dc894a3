"""Reports people share: cleaned outputs, a summary first, a headline table that tolerates new keys."""

from __future__ import annotations

import nbformat
import pandas as pd

from ruscarl_lib.demo import headline_table
from ruscarl_lib.notebook.reports import FOLD_LINES, FOLD_ROWS, clean_notebook, project_root, summary_html

ROOT = str(project_root())


def _notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("## Training curves"))
    code = nbformat.v4.new_code_cell(f"run('{ROOT}/outputs/x')")
    tqdm_line = "Tokenizing train dataset:   0%|          | 0/64 [00:00<?, ?ex/s]"
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=tqdm_line + "\rdone: 64 rows\n"),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "Loading weights:   0%|          | 0/26 [00:00<?, ?it/s]"}),
        nbformat.v4.new_output("stream", name="stdout", text=f"wrote {ROOT}/outputs/run/params.yaml\n"),
        nbformat.v4.new_output("stream", name="stdout",
                               text="".join(f"step {i} loss 0.{i}\n" for i in range(FOLD_LINES + 5))),
        nbformat.v4.new_output("display_data", data={
            "text/html": pd.DataFrame({"loss": range(FOLD_ROWS + 5)}).to_html(), "text/plain": "table"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={  # transformers' notebook progress bar and log
            "text/html": "<div><progress value='3' max='3'></progress> [3/3 00:02, Epoch 1/1]</div>"
                         "<table><tr><th>Step</th><th>Training Loss</th></tr><tr><td>1</td><td>0.5</td></tr>"
                         "<tr><td>2</td><td>0.4</td></tr></table>", "text/plain": "<IPython.core.display.HTML>"}),
    ]
    nb.cells.append(code)
    return nb


def test_clean_notebook_strips_residue_folds_logs_and_labels_figures():
    nb = _notebook()
    clean = clean_notebook(nb, name="03_train")
    outs = clean.cells[1].outputs
    texts = [o.get("text", "") for o in outs if o.output_type == "stream"]
    # the progress bar is gone, what was written after its carriage return stays
    assert texts[0] == "done: 64 rows\n"
    assert all("%|" not in str(o) for o in outs)  # the tqdm widget too
    assert texts[1] == "wrote outputs/run/params.yaml\n" and ROOT not in clean.cells[1].source
    html = [o.data["text/html"] for o in outs if o.output_type == "display_data"]
    assert html[0].startswith('<details class="ruscarl-fold"><summary>log, 20 lines')
    assert html[1].startswith('<details class="ruscarl-fold"><summary>table, 17 rows')
    assert html[2].startswith('<img alt="03_train: Training curves"') and "iVBORw0KGgo=" in html[2]
    assert html[3].startswith('<details class="ruscarl-fold"><summary>training log, 2 rows')
    assert "<progress" not in html[3] and "Training Loss" in html[3]
    # the executed notebook itself is untouched
    assert len(nb.cells[1].outputs) == 7 and ROOT in nb.cells[1].outputs[2].text


def test_headline_table_renders_whatever_per_policy_keys_exist():
    headline = {
        "heldout_score": {"start": 0.0, "ruscarl": 0.4123, "baseline": 0.05},
        "heldout_score_ci": {"start": [0.0, 0.0], "ruscarl": [0.33, 0.49], "baseline": [None, None]},
        "heldout_score_unclipped": {"start": -0.2, "ruscarl": 0.38, "baseline": -0.01},
        "zero_variance_frac": {"ruscarl": 0.41, "baseline": 0.97},  # a training number: no start
        "ruscarl_minus_baseline": 0.36, "report": "outputs/demo/report.html",
    }
    table = headline_table(headline)
    assert list(table.index) == ["start", "ruscarl", "baseline"]
    assert table.loc["ruscarl", "held-out score"] == "0.412 [0.330, 0.490]"
    assert table.loc["baseline", "held-out score"] == "0.050"  # no interval known: none shown
    assert table.loc["start", "held-out score unclipped"] == "-0.200"
    assert table.loc["start", "zero variance frac"] == "–"
    assert "heldout_score_ci" not in table.columns and "held-out score ci" not in table.columns
    page = summary_html({"suite": "sandbox"}, table, {"ruscarl minus baseline": 0.36})
    assert 'id="headline"' in page and "0.412 [0.330, 0.490]" in page and "<b>0.360</b>" in page


def test_foundation_headline_is_a_table_of_stage_numbers():
    table = headline_table({"01_rubric_exploration": {"n_examples": 12, "share_negative": 0.3211, "tags": ["a"]}})
    assert table.to_dict()["value"] == {"01_rubric_exploration: n_examples": "12",
                                        "01_rubric_exploration: share_negative": "0.321"}
