"""Run analysis and the evaluate / analysis notebooks on real tiny training runs.

Two runs of a tiny local model (scaffolded RuscaRL and plain GRPO) train for a few steps on a
rubric set whose criteria a rule judge can check ("uses the letter e"), so rewards vary and
per-criterion verdicts are real. The analysis numbers are checked against computations made
here straight from the files: the rollout parquet files, TRL's metrics.jsonl, the schedule
formula, and the criteria regraded with the rule verifier.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from itertools import combinations
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from ruscarl_lib.analysis.criteria import axis_met_rates, criterion_table, shown_vs_hidden

from ruscarl_lib.analysis.curves import group_table, length_reward, step_stats, training_curves, zero_variance_by_ratio

from ruscarl_lib.analysis.notes import missing

from ruscarl_lib.analysis.runs import load_run, load_runs, run_overview

from ruscarl_lib.analysis.summary import run_summary
from ruscarl_lib.data.write import write_jsonl
from ruscarl_lib.judges.rules import check_rule
from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.train.smoke_task import toy_params

pytestmark = pytest.mark.slow
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

G, STEPS = 4, 4
LETTERS = [("e", 5.0, "accuracy"), ("a", 3.0, "completeness"), ("o", 2.0, "communication"), ("s", 2.0, "completeness")]


def _criterion(letter: str, points: float, axis: str) -> Criterion:
    return Criterion(f"Uses the letter {letter}", points,
                     ("verifier:rule", "function:contains", f"parameters:{letter}", f"axis:{axis}"))


def _examples(n: int = 6) -> list[RubricExample]:
    """Rubrics a rule judge grades: random text meets common letters often, so rewards vary,
    and never meets the symbols of every third rubric, whose groups have zero variance."""
    out = []
    for i in range(n):
        if i % 3 == 2:
            rubric = [_criterion("§", 4.0, "accuracy"), _criterion("¤", 2.0, "completeness"),
                      _criterion("¶", -2.0, "accuracy")]
        else:
            rubric = [_criterion(*x) for x in LETTERS[: 2 + i % 2]] + [_criterion("c", -3.0, "accuracy")]
        out.append(RubricExample(id=f"q{i}", messages=[{"role": "user", "content": f"I have a headache ({i}). What should I do?"}],
                                 rubric=rubric, tags=[f"theme:{'emergency' if i % 2 else 'hedging'}"]))
    return out


def _tiny_model(folder: Path) -> Path:
    """The tiny model with a louder end-of-turn embedding, so answer lengths vary."""
    import torch
    from transformers import AutoModelForCausalLM

    from ruscarl_lib.models.tiny import save_tiny_model

    save_tiny_model(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.get_input_embeddings().weight[eos] *= 40.0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two real runs (scaffolded, plain) and a metrics-only copy of the plain one."""
    from ruscarl_lib.train.run import run_training

    root = tmp_path_factory.mktemp("analysis")
    model_dir = _tiny_model(root / "model")
    data = write_jsonl(_examples(), root / "rubrics.jsonl")
    runs_dir = root / "runs"
    for name, scaffold in [("ruscarl", {}), ("plain", {"enabled": False})]:
        params = toy_params(model_dir, runs_dir, name, max_steps=STEPS, max_completion_length=12, kl_coef=0.05,
                            scaffold=scaffold)
        params = params.model_copy(update={"data": params.data.model_copy(update={"path": str(data)})})
        run_training(params)
    shutil.copytree(runs_dir / "plain", runs_dir / "bare", ignore=shutil.ignore_patterns("rollouts"))
    return {"root": root, "model": model_dir, "data": data, "runs": runs_dir}


@pytest.fixture(scope="module")
def runs(world):
    return {r.name: r for r in load_runs(world["runs"] / "*")}


def _rollouts(run_dir: Path) -> pd.DataFrame:
    files = sorted((run_dir / "rollouts").glob("step_*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if x.get("kind") == "train"]


# --------------------------------------------------------------------------------------------
# Library
# --------------------------------------------------------------------------------------------


def test_runs_load_with_their_rubrics(runs):
    assert sorted(runs) == ["bare", "plain", "ruscarl"]
    assert runs["ruscarl"].rubrics is not None and runs["ruscarl"].verdict_column == "judge_verdicts"
    assert runs["bare"].rollouts.empty and any("no rollout table" in n for n in runs["bare"].notes)
    overview = run_overview(list(runs.values())).set_index("run")
    assert overview.loc["ruscarl", "rollouts"] == STEPS * 2 * G and overview.loc["ruscarl", "rl_steps"] == STEPS
    assert overview.loc["plain", "scaffold"] is False or overview.loc["plain", "scaffold"] == False  # noqa: E712


def test_step_stats_agree_with_files_trainer_and_schedule(world, runs):
    stats = step_stats(list(runs.values())).set_index(["run", "rl_step"])
    for name in ("ruscarl", "plain"):
        df = _rollouts(world["runs"] / name)
        logged = {m["rl_step"]: m for m in _metrics(world["runs"] / name)}
        for step, part in df.groupby("rl_step"):
            row = stats.loc[(name, step)]
            assert row["reward_mean"] == pytest.approx(part["reward"].mean())
            assert row["completion_tokens_mean"] == pytest.approx(part["completion_tokens"].mean())
            # the trainer's own numbers for the same step
            assert row["reward_mean"] == pytest.approx(logged[step]["reward"], abs=1e-5)
            assert row["zero_var_frac"] == pytest.approx(logged[step]["frac_reward_zero_std"])
            assert row["kl"] == pytest.approx(logged[step]["kl"]) and row["entropy"] == pytest.approx(logged[step]["entropy"])
            # the schedule: linear decay (1 - t) times the linear intra-group ratio (G-1-i)/(G-1)
            t = (step - 1) / (STEPS - 1)
            expected = np.mean([(1 - t) * (G - 1 - i) / (G - 1) for i in range(G)]) if name == "ruscarl" else 0.0
            assert row["scaffold_ratio_mean"] == pytest.approx(expected)
    assert stats.loc[("ruscarl", 1), "scaffold_ratio_mean"] == pytest.approx(0.5)
    # the run without rollouts still has curves, from its metrics, and says so
    bare = stats.loc["bare"]
    plain = stats.loc["plain"]
    assert bare["reward_mean"].to_numpy() == pytest.approx(plain["reward_mean"].to_numpy(), abs=1e-5)
    assert any("bare: curves from logged metrics only" in n for n in missing(step_stats(list(runs.values()))))
    curves = training_curves(list(runs.values()), ["reward_mean", "kl"], smooth=2)
    got = curves[(curves.run == "plain") & (curves.metric == "reward_mean")]["value"].to_numpy()
    want = plain["reward_mean"].rolling(2, center=True, min_periods=1).mean().to_numpy()
    assert got == pytest.approx(want)


def test_zero_variance_groups_against_ratio(world, runs):
    both = [runs["ruscarl"], runs["plain"]]
    groups = group_table(both)
    by_ratio = zero_variance_by_ratio(both, bins=2)
    expected: dict[tuple[str, str], list[bool]] = {}
    for name in ("ruscarl", "plain"):
        df = _rollouts(world["runs"] / name).sort_values(["rl_step", "group", "group_position"])
        n_groups = 0
        for start in range(0, len(df), G):  # a group is G consecutive rollouts of one prompt
            chunk = df.iloc[start:start + G]
            assert chunk["example_id"].nunique() == 1
            zero = bool(np.ptp(chunk["reward"].to_numpy()) == 0)
            ratio = chunk["scaffold_ratio"].mean()
            label = "0" if ratio == 0 else "(0, 0.5]" if ratio <= 0.5 else "(0.5, 1]"
            expected.setdefault((name, label), []).append(zero)
            n_groups += 1
        assert len(groups[groups.run == name]) == n_groups
    got = {(r.run, str(r.ratio_bin)): (r.n_groups, r.zero_var_frac) for r in by_ratio.itertuples()}
    assert got == {k: (len(v), pytest.approx(np.mean(v))) for k, v in expected.items()}
    assert {k[1] for k in got if k[0] == "plain"} == {"0"}
    assert 0 < groups["zero_variance"].astype(float).mean() < 1  # rewards do vary


def _regraded(world) -> pd.DataFrame:
    """Every (rollout, criterion) of the scaffolded run graded again with the rule verifier."""
    rubrics = {ex.id: ex.rubric for ex in _examples()}
    rows = []
    for r in _rollouts(world["runs"] / "ruscarl").itertuples():
        shown = set(int(i) for i in r.shown)
        for i, c in enumerate(rubrics[r.example_id]):
            status = "shown" if i in shown else "hidden" if shown else "unscaffolded"
            rows.append({"rl_step": r.rl_step, "met": float(check_rule(c, r.completion).met), "status": status,
                         "polarity": "positive" if c.points > 0 else "negative", "axis": c.tag_value("axis")})
    return pd.DataFrame(rows)


def test_per_criterion_tables_match_regraded_verdicts(world, runs):
    truth = _regraded(world)
    table = criterion_table([runs["ruscarl"]])
    assert table["met"].tolist() == truth["met"].tolist()
    assert table["status"].astype(str).tolist() == truth["status"].tolist()

    rates = axis_met_rates([runs["ruscarl"]], max_bins=100)
    pos = truth[truth.polarity == "positive"]
    want = pos.groupby(["rl_step", "axis"])["met"].agg(["mean", "size"])
    got = rates.set_index(["step", "axis"])
    assert len(got) == len(want)
    for key, row in want.iterrows():
        assert got.loc[key, "met_rate"] == pytest.approx(row["mean"]) and got.loc[key, "n"] == row["size"]
    unaided = axis_met_rates([runs["ruscarl"]], rollouts="unscaffolded", max_bins=100)
    assert unaided["n"].sum() == len(pos[pos.status == "unscaffolded"])
    two_bins = axis_met_rates([runs["ruscarl"]], max_bins=2)
    assert sorted(two_bins["step"].unique()) == [1, 3]

    shown = shown_vs_hidden([runs["ruscarl"]]).set_index(["polarity", "status"])
    for (pol, status), g in truth.groupby(["polarity", "status"]):
        row = shown.loc[(pol, status)]
        k, n = g["met"].sum(), len(g)
        assert (row["n"], row["met"]) == (n, k)
        # Wilson interval, written out
        p, z = k / n, 1.96
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((max(0, centre - half), min(1, centre + half)))
    # the plain run has no scaffold: every criterion is "unscaffolded"
    plain = shown_vs_hidden([runs["plain"]])
    assert set(plain["status"].astype(str)) == {"unscaffolded"}


def test_length_against_reward(world, runs):
    table = length_reward([runs["ruscarl"]], n_phases=2).set_index("phase")
    df = _rollouts(world["runs"] / "ruscarl")
    assert df["completion_tokens"].nunique() > 2  # lengths vary
    for phase, steps in [("steps 1-2", [1, 2]), ("steps 3-4", [3, 4])]:
        part = df[df.rl_step.isin(steps)]
        x, y = part["completion_tokens"].to_numpy(float), part["reward"].to_numpy(float)
        row = table.loc[phase]
        assert row["n"] == len(part) and row["mean_tokens"] == pytest.approx(x.mean())
        assert row["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
        rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        assert row["spearman_r"] == pytest.approx(np.corrcoef(rx, ry)[0, 1])


def test_run_summary_numbers(world, runs):
    summary = run_summary(list(runs.values())).set_index("run")
    df = _rollouts(world["runs"] / "ruscarl")
    s = summary.loc["ruscarl"]
    # 4 steps: the first/last 10 % round to one step
    assert s["reward_first"] == pytest.approx(df[df.rl_step == 1]["reward"].mean())
    assert s["reward_last"] == pytest.approx(df[df.rl_step == STEPS]["reward"].mean())
    assert s["last_scaffolded_step"] == STEPS - 1  # linear decay reaches 0 at the last step
    assert s["length_reward_r"] == pytest.approx(np.corrcoef(df["completion_tokens"], df["reward"])[0, 1])
    assert s["shown_minus_hidden"] == pytest.approx(s["met_rate_shown"] - s["met_rate_hidden"])
    assert summary.loc["plain", "last_scaffolded_step"] == 0
    assert math.isnan(summary.loc["bare", "zero_var_frac"])  # no rollouts: no groups


def test_missing_columns_are_reported_not_fatal(world, runs, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from ruscarl_lib.analysis import figures as P

    # rollouts without verdicts or shown criteria, and a rubric set that does not match
    run_dir = tmp_path / "stripped"
    shutil.copytree(world["runs"] / "ruscarl", run_dir)
    for f in (run_dir / "rollouts").glob("*.parquet"):
        pd.read_parquet(f).drop(columns=["judge_verdicts", "shown"]).to_parquet(f)
    stripped = load_run(run_dir)
    assert stripped.verdict_column is None
    table = axis_met_rates([stripped, runs["bare"]])
    assert table.empty and any("stripped: no per-criterion verdicts" in n for n in missing(table))
    assert P.plot_axis_met_rates(table) is None
    P.publish(None, tmp_path / "x.png", table)
    assert not (tmp_path / "x.png").exists()

    other = load_run(world["runs"] / "ruscarl", examples=_examples(2))
    assert other.rubrics is None and any("not in the rubric set" in n for n in other.notes)
    shown = shown_vs_hidden([other])
    assert set(shown["polarity"]) == {"unknown"} and axis_met_rates([other]).empty
    # figures still draw for what is there
    curves = training_curves([stripped, runs["bare"]])
    P.publish(P.plot_training_curves(curves), tmp_path / "c.png", curves)
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(FileNotFoundError):
        load_runs([tmp_path / "nope"])
    with pytest.raises(ValueError, match="not a training run folder"):
        load_runs([world["root"]])
    assert load_runs([str(tmp_path / "nothing*")]) == []


# --------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------


def _errors(nb_path: Path) -> list:
    nb = nbformat.read(nb_path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.fixture(scope="module")
def evaluated(world):
    """04_evaluate on the trained adapter of the scaffolded run (found through the params)."""
    from ruscarl_lib.notebook.reports import run_notebook

    params_file = world["root"] / "eval_params.yaml"
    params_file.write_text(yaml.safe_dump({
        "data": {"path": str(world["data"])}, "judge": {"kind": "rule"},
        "output": {"dir": str(world["runs"]), "run_name": "ruscarl"},
        "train": {"model": str(world["model"])},
        "eval": {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "batch_size": 8},
    }))
    out = world["root"] / "eval_ruscarl"
    executed = run_notebook("04_evaluate", world["root"] / "04.ipynb", {
        "params_file": str(params_file), "output_dir": str(out), "use_trained_adapter": True,
        "n_samples": 3, "limit": 4, "n_bootstrap": 50, "backend": "transformers"}, progress=False)
    return out, executed


def test_evaluate_notebook(world, evaluated):
    out, executed = evaluated
    assert not _errors(executed)
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["extra"]["adapter"] == str(world["runs"] / "ruscarl" / "adapter")
    assert yaml.safe_load((out / "params.yaml").read_text())["eval"]["adapter"] == report["extra"]["adapter"]
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 4 * 3 and summary["n_responses"] == 12 and summary["n_examples"] == 4
    # the headline number, recomputed by regrading the saved answers
    rubrics = {ex.id: ex.rubric for ex in _examples()}
    gens = pd.read_parquet(out / "generations.parquet")
    regraded = []
    for g in gens.itertuples():
        crits = rubrics[g.example_id]
        earned = sum(c.points for c in crits if check_rule(c, g.response).met)
        regraded.append(earned / sum(c.points for c in crits if c.points > 0))
    assert summary["score"] == pytest.approx(min(1.0, max(0.0, float(np.mean(regraded)))))
    assert summary["std"] == pytest.approx(report["std"]) and summary["ci_low"] <= summary["score"] <= summary["ci_high"]
    assert set(summary["axis"]) == {"accuracy", "completeness", "communication"}
    # Best-of-N: N=1 is the mean score; N=3 (all samples) is the mean of per-prompt maxima;
    # N=2 averages the max over every pair
    per_prompt = [g["score"].to_numpy() for _, g in scores.groupby("example_id")]
    assert summary["best_of_n"]["n1"] == pytest.approx(np.mean([p.mean() for p in per_prompt]))
    assert summary["best_of_n"]["n2"] == pytest.approx(np.mean([np.mean([max(a, b) for a, b in combinations(p, 2)])
                                                                for p in per_prompt]))
    assert summary["best_of_n"]["n3"] == pytest.approx(np.mean([p.max() for p in per_prompt]))
    assert summary["novelty"]["n"] == int((pd.read_parquet(out / "novelty.parquet")["n_tokens"] > 0).sum())
    assert "mean_diversity_bleu" in summary["diversity"]
    for name in ["scores.png", "lengths.png", "best_of_n.png", "best_of_n.csv", "tag_scores.csv"]:
        assert (out / name).stat().st_size > 0, name


def test_analysis_notebook(world, evaluated, tmp_path):
    from ruscarl_lib.evaluate.run import run_evaluation
    from ruscarl_lib.params import Params
    from ruscarl_lib.notebook.reports import run_notebook

    eval_dir, _ = evaluated
    base_eval = world["root"] / "eval_base"
    run_evaluation(Params.model_validate({"judge": {"kind": "rule"}, "eval": {
        "model": str(world["model"]), "backend": "transformers", "limit": 4, "max_new_tokens": 8,
        "n_bootstrap": 50}}), base_eval, examples=_examples(), progress=False)

    out = tmp_path / "analysis"
    executed = run_notebook("05_analysis", tmp_path / "05.ipynb", {
        "output_dir": str(out), "runs": [str(world["runs"] / "*")],
        "evals": [str(eval_dir), str(base_eval)], "n_phases": 2}, progress=False)
    assert not _errors(executed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == 3 and summary["n_evals"] == 2
    df = _rollouts(world["runs"] / "ruscarl")
    assert summary["runs"]["ruscarl"]["reward_last"] == pytest.approx(df[df.rl_step == STEPS]["reward"].mean())
    for name, folder in [("eval_ruscarl", eval_dir), ("eval_base", base_eval)]:
        report = json.loads((folder / "report.json").read_text())
        got = summary["evals"][name]
        assert got["score"] == pytest.approx(report["score"])
        assert got["ci_low"] == pytest.approx(max(0.0, report["score"] - 1.96 * report["std"]))
        per_response = pd.read_parquet(folder / "scores.parquet")["score"].dropna()
        assert got["unclipped_score"] == pytest.approx(per_response.mean())
    # the zero-variance share of the training run behind the adapter, recomputed from its rollouts
    spread = df.groupby(["rl_step", "group"])["reward"].std()
    assert summary["evals"]["eval_ruscarl"]["train_zero_var_frac"] == pytest.approx((spread.abs() < 1e-8).mean())
    assert summary["evals"]["eval_base"]["train_zero_var_frac"] is None  # no adapter, no training run
    assert any("bare" in n for n in summary["notes"])
    for name in ["curves.png", "zero_variance.png", "stability.png", "axis_met_rates.png", "length_vs_reward.png",
                 "shown_vs_hidden.png", "eval_scores.png", "best_of_n.png", "step_stats.csv", "run_summary.csv"]:
        assert (out / name).stat().st_size > 0, name
    # the Best-of-N table holds only the evaluation that sampled several answers
    assert set(pd.read_csv(out / "best_of_n.csv")["model"]) == {"eval_ruscarl"}
    # the skipped parts are explained in the executed notebook
    text = json.dumps(nbformat.read(tmp_path / "05.ipynb", as_version=4).cells)
    assert "bare: curves from logged metrics only" in text
