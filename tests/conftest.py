"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def healthbench_500_path() -> Path:
    """HealthBench-500 (verl parquet) from $RUSCARL_HEALTHBENCH_500 or the shared folder; skips if absent."""
    env = os.environ.get("RUSCARL_HEALTHBENCH_500")
    path = Path(env) if env else REPO.parent / "shared/data/healthbench/healthbench_500.parquet"
    if not path.exists():
        pytest.skip(f"HealthBench-500 not available at {path}")
    return path


def missing_under_ci(reason: str) -> None:
    """Skip with `reason`, or fail under CI=true (where .ci/run installs what is missing)."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: .ci/run sets it up, so a missing piece is a failure)")
    pytest.skip(reason)


def vllm_lane_python() -> Path:
    """The vLLM CPU lane's interpreter with SmolLM2 built; skips (fails under CI=true) otherwise."""
    from ruscarl_lib.models.local import LocalModelError, ensure_local_model

    lane = REPO / ".venv-vllm" / "bin" / "python"
    if not lane.exists():
        missing_under_ci(f"no vLLM CPU lane at {lane} (bash scripts/setup_vllm_lane.sh)")
    try:
        ensure_local_model("smollm2-135m-instruct")
    except LocalModelError as e:
        missing_under_ci(str(e))
    return lane


@pytest.fixture(scope="session")
def real_judge_server():
    """One real `vllm serve` judge for every test that needs it: vLLM's CPU build from
    .venv-vllm (scripts/setup_vllm_lane.sh) serving SmolLM2-135M-Instruct, built from the wheel
    that scripts/setup.sh fetched. Started once on a free loopback port, stopped by pid; its
    log stays in outputs/tests/judge_server.log."""
    from ruscarl_lib.judges.server import JudgeServer, JudgeServerError, find_vllm
    from ruscarl_lib.models.local import LocalModelError, ensure_local_model
    from ruscarl_lib.params import JudgeServerParams

    try:
        find_vllm()
        ensure_local_model("smollm2-135m-instruct")
    except (JudgeServerError, LocalModelError) as e:
        missing_under_ci(f"the real judge server is not available: {e}")
    server = JudgeServer(JudgeServerParams(), REPO / "outputs" / "tests" / "judge_server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_tiny_notebook(path: Path, parameters: str, body: str) -> Path:
    """A two-cell notebook (a cell tagged `parameters`, then `body`) for tests that run
    notebooks through papermill."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, str(path))
    return path


def kill_sweep(proc, kernel_pid: int | None) -> None:
    """Stop a sweep started in its own process group (its papermill children with it), and the
    notebook kernel, which runs in a session of its own."""
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if kernel_pid is not None:
        try:
            os.kill(kernel_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
