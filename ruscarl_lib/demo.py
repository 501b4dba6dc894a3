"""The main job: the notebook suite, headless, on CPU data.

Three suites. `foundation`: explore the embedded sample rubrics (01) and draw the scaffold
schedule (02). `healthbench`: the real path, 01 to 05 with a pretrained chat model as the policy
and a local vLLM judge server started once for every stage (params/healthbench_cpu.yaml).
`sandbox` (the main job): the whole pipeline on the CPU sandbox, in stages,
each one notebook with plain parameters: build the sandbox world and policy (00), explore
its rubrics (01), draw the scaffold schedule (02), train RuscaRL and the plain rubric-GRPO
baseline from the same warm start with the same seed and steps (03 twice), evaluate the starting
policy and both trained ones on the held-out split without scaffolds (04 three times), and
compare them (05). Every stage writes its executed copy and a `summary.json`; a stage that
already finished is kept unless `force` is set, so an interrupted demo resumes where it stopped.
One HTML report stitches the executed notebooks together.

A finished stage is kept only when its inputs are unchanged: each stage records a digest of
its notebook's source, its parameters, the content of its params file, the library version
and what its upstream stages produced (their digests and summaries) in
`notebooks/<stage>.stage.json`. A stage whose inputs changed, or every stage under `force`,
runs afresh: training with `fresh=True` (the run folder is restarted, not continued) and
evaluation with `overwrite=True` (regenerated and regraded, not reused). An interrupted stage
with unchanged inputs resumes (training from its last checkpoint, evaluation from its chunks).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruscarl_lib.common.fingerprint import digest, file_digest
from ruscarl_lib.common.paths import resolve_path
from ruscarl_lib.notebook.reports import echo, export_each, export_html, read_json, run_notebook, write_json


@dataclass
class Stage:
    name: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    summary: str = "summary.json"  # relative to the stage's output folder
    after: tuple[str, ...] = ()    # upstream stages whose outputs this one reads
    fresh: dict[str, Any] = field(default_factory=dict)  # parameters that make a rerun start over
    needs_judge: bool = False  # gets `judge_url`: the demo's judge server (healthbench suite)


SUITES = ("foundation", "sandbox", "healthbench")
DEFAULT_PARAMS = {"foundation": "params/default.yaml", "sandbox": "params/sandbox.yaml",
                  "healthbench": "params/healthbench_cpu.yaml"}
TITLES = {"sandbox": "RuscaRL demo on the CPU sandbox", "foundation": "RuscaRL: rubrics and scaffolds",
          "healthbench": "RuscaRL on the real path: SmolLM2-135M-Instruct with a vLLM judge"}


def foundation_stages(out: Path, params_file: str) -> list[Stage]:
    return [Stage(n, n, {"params_file": params_file, "output_dir": str(out / n)})
            for n in ("01_rubric_exploration", "02_scaffold_tuning")]


def demo_stages(out: Path, params_file: str, overrides: dict[str, Any] | None = None,
                suite: str = "sandbox") -> list[Stage]:
    """The demo's notebooks in order. `overrides` are extra notebook parameters per stage name."""
    if suite not in SUITES:
        raise ValueError(f"unknown demo suite {suite!r}; expected one of {SUITES}")
    if suite == "foundation":
        return foundation_stages(out, params_file)
    if suite == "healthbench":
        # the params file as it is (no world to build); 03 and 04 grade with the demo's judge
        stages = foundation_stages(out, params_file)
        stages += pipeline_stages(out, params_file, (), needs_judge=True)
    else:
        world = out / "00_sandbox_world"
        prepared = str(world / "sandbox_params.yaml")
        w = ("00_sandbox_world",)
        stages = [
            Stage("00_sandbox_world", "00_sandbox_world", {"params_file": params_file, "output_dir": str(world)}),
            Stage("01_rubric_exploration", "01_rubric_exploration",
                  {"params_file": prepared, "output_dir": str(out / "01_rubric_exploration")}, after=w),
            Stage("02_scaffold_tuning", "02_scaffold_tuning",
                  {"params_file": prepared, "output_dir": str(out / "02_scaffold_tuning")}, after=w),
        ]
        stages += pipeline_stages(out, prepared, w)
    for stage in stages:
        stage.parameters.update((overrides or {}).get(stage.name, {}))
    return stages


def pipeline_stages(out: Path, params_file: str, after: tuple[str, ...], needs_judge: bool = False) -> list[Stage]:
    """03 twice (RuscaRL, baseline: same start, seed and steps), 04 three times (the start and
    both trained policies, no scaffolds) and 05, all on `params_file`, after stages `after`."""
    runs, evals = out / "runs", out / "evals"
    stages = []
    for arm, enabled in (("ruscarl", True), ("baseline", False)):
        stages.append(Stage(f"03_train_{arm}", "03_train_grpo",
                            {"params_file": params_file, "output_dir": str(runs), "run_name": arm,
                             "scaffold_enabled": enabled}, after=after, fresh={"fresh": True},
                            needs_judge=needs_judge))
    # a run folder as `adapter`: 04 evaluates its final weights (adapter/ for LoRA, model/ for full)
    for name, adapter in (("start", ""), ("ruscarl", str(runs / "ruscarl")), ("baseline", str(runs / "baseline"))):
        stages.append(Stage(f"04_evaluate_{name}", "04_evaluate",
                            {"params_file": params_file, "output_dir": str(evals / name), "adapter": adapter},
                            after=after + ((f"03_train_{name}",) if adapter else ()), fresh={"overwrite": True},
                            needs_judge=needs_judge))
    stages.append(Stage("05_analysis", "05_analysis", {
        "params_file": params_file, "output_dir": str(out / "05_analysis"),
        "runs": [str(runs / "ruscarl"), str(runs / "baseline")],
        "evals": [str(evals / n) for n in ("start", "ruscarl", "baseline")]},
        after=after + tuple(s.name for s in stages)))
    return stages


@contextlib.contextmanager
def demo_judge(params_file: str, out: Path):
    """One judge server for every stage of a demo that grades (started on first need)."""
    from ruscarl_lib.judges.server import JudgeServer
    from ruscarl_lib.params import load_params

    with JudgeServer(load_params(params_file).judge.server, out / "judge_server.log") as server:
        yield server


def _summary_path(stage: Stage) -> Path:
    p = stage.parameters
    folder = Path(p["output_dir"]) / p["run_name"] if "run_name" in p else Path(p["output_dir"])
    return folder / stage.summary


def run_demo(
    out_dir: str | Path = "outputs/demo",
    params_file: str | None = None,
    *,
    suite: str = "sandbox",
    force: bool = False,
    progress: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    judge_url: str | None = None,
) -> dict[str, Any]:
    """Execute every stage, write `report.html` and `headline.json`, and return the headline numbers.

    Suite `healthbench` grades with a judge server it starts from the params' `judge.server`
    section on first need (one for every stage), or with the one at `judge_url`.
    """
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    executed: list[Path] = []
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    stages = demo_stages(out, params_file or DEFAULT_PARAMS.get(suite, ""), overrides, suite)
    ran, kept = [], []
    done: dict[str, str] = {}  # stage name -> digest of its inputs and summary, for downstream stages
    judge_server = None
    with contextlib.ExitStack() as servers:
        for i, stage in enumerate(stages, 1):
            target = out / "notebooks" / f"{stage.name}.ipynb"
            summary_file = _summary_path(stage)
            record_file = target.with_suffix(".stage.json")
            inputs = stage_inputs_digest(stage, done)
            record = read_json(record_file) if record_file.exists() else {}
            finished = target.exists() and summary_file.exists()
            if finished and not force and record.get("inputs") == inputs and record.get("status") == "done":
                echo(f"[demo {i}/{len(stages)}] {stage.name}: already done with the same inputs, kept")
                kept.append(stage.name)
            else:
                # start over unless this is the same stage interrupted (same inputs, not finished)
                fresh = force or record.get("inputs") != inputs or (finished and not record)
                why = "forced" if force else ("inputs changed" if fresh and (record or finished) else "")
                echo(f"[demo {i}/{len(stages)}] {stage.name} ..." + (f" ({why}: from scratch)" if why else ""))
                t0 = time.perf_counter()
                write_json(record_file, {"inputs": inputs, "status": "running"})
                parameters = {**stage.parameters, **(stage.fresh if fresh else {})}
                if stage.needs_judge:
                    # the judge's address is not an input: it changes with every server start
                    if judge_url is None:
                        judge_server = servers.enter_context(demo_judge(stage.parameters["params_file"], out))
                        judge_url = judge_server.base_url
                    parameters["judge_url"] = judge_url
                run_notebook(stage.notebook, target, parameters, progress=progress)
                write_json(record_file, {"inputs": inputs, "status": "done"})
                echo(f"[demo {i}/{len(stages)}] {stage.name} finished in {time.perf_counter() - t0:.0f}s")
                ran.append(stage.name)
            executed.append(target)
            results[stage.name] = read_json(summary_file)
            done[stage.name] = digest({"inputs": inputs, "summary": results[stage.name]})
    title = TITLES[suite]
    headline = demo_headline(results) if suite != "foundation" else dict(results)
    if suite == "healthbench":
        headline = {k: v for k, v in headline.items() if not k.startswith("start_")}  # no sandbox world
        if judge_server is not None:
            headline["judge_server_startup_s"] = round(judge_server.startup_s or 0.0, 1)
    wall_s = round(time.perf_counter() - t_start, 1)
    summary = report_summary(headline, suite=suite, params_file=params_file or DEFAULT_PARAMS.get(suite, ""),
                             out=out, wall_s=wall_s, ran=ran, kept=kept)
    report = export_html(executed, out / "report.html", title=title, summary=summary)
    export_each(executed)
    headline.update(report=str(report), notebooks=[str(p) for p in executed], wall_s=wall_s)
    write_json(out / "headline.json", headline)
    return headline


def stage_inputs_digest(stage: Stage, upstream: dict[str, str]) -> str:
    """Digest of everything a stage's result depends on: its notebook's source, its
    parameters, its params file's content (read now, after upstream stages wrote it), the
    library version and the digests of its upstream stages' results."""
    from ruscarl_lib import __version__
    from ruscarl_lib.notebook.reports import notebook_path

    params_file = stage.parameters.get("params_file")
    params_path = resolve_path(params_file) if params_file else None
    missing = [name for name in stage.after if name not in upstream]
    if missing:
        raise RuntimeError(f"demo stage {stage.name} runs before its upstream stages {missing}")
    return digest({
        "notebook": file_digest(notebook_path(stage.notebook)),
        "parameters": stage.parameters,
        "params_file": file_digest(params_path) if params_path and params_path.is_file() else None,
        "library": __version__,
        "upstream": {name: upstream[name] for name in stage.after},
    })


ARMS = ("start", "ruscarl", "baseline")

#: The figures a reader wants on the first screen, per suite (relative to the demo folder).
KEY_FIGURES = {
    "sandbox": [("05_analysis/eval_scores.png", "held-out scores of the start, RuscaRL and baseline policies"),
                ("05_analysis/curves.png", "training curves of both arms: reward, scaffold ratio, exploration")],
    "healthbench": [("05_analysis/eval_scores.png", "scores of the start, RuscaRL and baseline policies by the vLLM judge"),
                    ("05_analysis/curves.png", "training curves of both arms: reward, scaffold ratio, exploration")],
    "foundation": [("01_rubric_exploration/overview.png", "rubric dataset overview: criteria, points, tags"),
                   ("02_scaffold_tuning/schedule.png", "scaffold schedule: decay and ratio per sample and step")],
}


def headline_table(headline: dict[str, Any]):
    """The headline as a table: one row per policy, one column per per-policy number.

    Robust to what the headline holds: every key whose value maps policy names to numbers is
    a column (`heldout_score`, `heldout_score_unclipped`, ...); a key `<k>_ci` holding
    [low, high] per policy is shown with `<k>` as "0.41 [0.33, 0.49]". A headline without
    per-policy keys (the foundation suite) becomes a two-column table of its scalar numbers.
    """
    import pandas as pd

    per_arm = {k: v for k, v in headline.items()
               if isinstance(v, dict) and v and set(v) <= set(ARMS) | {"mean"}}
    if not per_arm:
        rows = [(f"{stage}: {k}", _number(v)) for stage, summary in headline.items() if isinstance(summary, dict)
                for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return pd.DataFrame(rows, columns=["quantity", "value"]).set_index("quantity")
    intervals = {k[:-3]: per_arm.pop(k) for k in list(per_arm) if k.endswith("_ci") and k[:-3] in per_arm}
    table = {}
    for key, values in per_arm.items():
        col = {}
        for arm in ARMS:
            v = values.get(arm)
            text = "–" if v is None else _number(v)
            ci = intervals.get(key, {}).get(arm)
            if v is not None and isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
                text += f" [{_number(ci[0])}, {_number(ci[1])}]"
            col[arm] = text
        table[key.replace("_", " ").replace("heldout", "held-out")] = col
    frame = pd.DataFrame(table)
    frame.index.name = "policy"
    return frame


def _number(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def report_summary(headline: dict[str, Any], *, suite: str, params_file: str, out: Path, wall_s: float,
                   ran: list[str], kept: list[str]) -> str:
    """The report's opening: what was run, the headline table and numbers, the key figures."""
    from ruscarl_lib.notebook.reports import relative_to_root, summary_html

    table = headline_table(headline)
    numbers = {k.replace("_", " "): v for k, v in headline.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "wall_s"}
    what = {"suite": suite, "params": relative_to_root(resolve_path(params_file)) if params_file else "",
            "wall time": f"{wall_s:.0f}s ({len(ran)} stages run, {len(kept)} kept from an earlier run)"}
    note = ("Held-out scores: the policies answer the held-out tasks without scaffolds; brackets are 95% intervals."
            if suite != "foundation" else "")
    figures = [(out / rel, alt) for rel, alt in KEY_FIGURES.get(suite, [])]
    return summary_html(what, table, numbers, figures, note)


def demo_headline(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader wants first: held-out scores of the three policies (HealthBench's
    clipped mean with its interval, and the unclipped mean next to it: clipping to 0 hides a
    policy that keeps tripping negative criteria), the share of zero-variance groups over each
    training run (groups that gave GRPO no gradient), and the bottleneck."""
    world = results.get("00_sandbox_world", {})
    evals = {name: results.get(f"04_evaluate_{name}", {}) for name in ARMS}
    scores = {name: e.get("score") for name, e in evals.items()}
    unclipped = {name: e.get("unclipped_score") for name, e in evals.items()}
    headline = {
        "heldout_score": scores,
        "heldout_score_ci": {name: [e.get("ci_low"), e.get("ci_high")] for name, e in evals.items()},
        "heldout_unclipped_score": unclipped,
        "train_zero_variance_frac": {arm: results.get(f"03_train_{arm}", {}).get("zero_var_frac")
                                     for arm in ("ruscarl", "baseline")},
        "start_unhinted_score": world.get("unhinted_score"),
        "start_hinted_score": world.get("hinted_score"),
    }
    if scores["ruscarl"] is not None and scores["baseline"] is not None:
        headline["ruscarl_minus_baseline"] = round(scores["ruscarl"] - scores["baseline"], 4)
    if unclipped["ruscarl"] is not None and unclipped["baseline"] is not None:
        headline["ruscarl_minus_baseline_unclipped"] = round(unclipped["ruscarl"] - unclipped["baseline"], 4)
    return headline
