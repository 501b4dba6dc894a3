"""The judge server as a component (ruscarl_lib.judges.server), on a stand-in `vllm` executable.

tests/fake_vllm.py takes the place of `vllm serve`: it listens where it is told and answers like
the scripted judge. What is checked here is the life cycle around any server: the command and
environment it gets, readiness, a server that fails to start or starts too slowly, a server
that dies while a judge uses it (reported at once, not retried for ever), and the stop by
process group. The real vLLM server is exercised in tests/test_real_judge.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from ruscarl_lib.judges import GradingItem, build_judge
from ruscarl_lib.judges.server import JudgeServer, JudgeServerDied, JudgeServerError, find_vllm, served_judge
from ruscarl_lib.params import JudgeParams, JudgeServerParams
from ruscarl_lib.data.rubric import Criterion

pytestmark = pytest.mark.timeout(120)
FAKE = Path(__file__).with_name("fake_vllm.py")
CONV = [{"role": "user", "content": "My ankle is swollen after a fall. What now?"}]
CRITERIA = [Criterion("Advises [[ice]].", 4), Criterion("Suggests an [[x-ray]] if it cannot bear weight.", 3),
            Criterion("Recommends [[running]] on it.", -5)]


@pytest.fixture
def fake_vllm(tmp_path):
    """An executable named like vLLM's that runs tests/fake_vllm.py with this Python."""
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def _params(command: str, **kw) -> JudgeServerParams:
    # a folder path as the model: nothing to build, and it is passed through as given
    return JudgeServerParams(command=command, model=kw.pop("model", "/models/some-judge"),
                             served_model_name=kw.pop("served_model_name", "judge-x"), **kw)


def _grade(judge, items):
    async def go():
        try:
            return await judge.grade_many(items)
        finally:
            await judge.llm.aclose()
    return asyncio.run(go())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_server_starts_serves_a_judge_and_stops_by_process_group(fake_vllm, tmp_path, monkeypatch):
    args_file = tmp_path / "args.json"
    monkeypatch.setenv("FAKE_VLLM_ARGS_FILE", str(args_file))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    jp = JudgeParams(kind="openai", cache_path=None, max_retries=1, backoff_base_s=0.01,
                     server=_params(fake_vllm, threads=2, kv_cache_gib=1.5, extra_args=["--seed", "7"]).model_dump())
    jp = jp.model_copy(update={"server": jp.server.model_copy(update={"start": True})})
    with served_judge(jp, tmp_path / "run") as (served, server):
        pid = server.proc.pid
        assert served.base_urls == [f"http://127.0.0.1:{server.port}/v1"] and served.model == "judge-x"
        judge = server.attach(build_judge(served))
        verdicts = _grade(judge, [GradingItem(CONV, "Use ice and get an x-ray if you cannot stand.", CRITERIA)])
        assert [v.met for v in verdicts[0]] == [True, True, False]
        assert all(v.source == "judge" for v in verdicts[0])
        assert judge.llm.liveness == server.problem  # the cached/composite wrappers were walked
    assert _gone(pid)  # stopped on leaving the block
    got = json.loads(args_file.read_text())
    argv = got["argv"]
    assert argv[:2] == ["serve", "/models/some-judge"]
    for flag, value in [("--host", "127.0.0.1"), ("--served-model-name", "judge-x"), ("--max-model-len", "2048"),
                        ("--seed", "7")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--enforce-eager" in argv
    assert got["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1.5" and got["env"]["OMP_NUM_THREADS"] == "2"
    log = (tmp_path / "run" / "judge_server.log").read_text()
    assert log.startswith("$ ") and "fake vllm: serving /models/some-judge as judge-x" in log


def test_without_start_the_judge_params_pass_through(tmp_path):
    jp = JudgeParams(kind="openai", base_urls=["http://127.0.0.1:9/v1"])
    with served_judge(jp, tmp_path) as (served, server):
        assert served is jp and server is None


def test_a_server_that_exits_at_start_is_reported_with_its_log(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_EXIT_CODE", "3")
    t0 = time.monotonic()
    with pytest.raises(JudgeServerError) as e:
        JudgeServer(_params(fake_vllm), tmp_path / "s.log").start()
    assert time.monotonic() - t0 < 30
    assert "exited with code 3" in str(e.value) and "exiting as asked" in str(e.value)


def test_a_server_that_does_not_come_up_in_time_is_stopped(fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DELAY_S", "60")
    server = JudgeServer(_params(fake_vllm, startup_timeout_s=3), tmp_path / "s.log")
    with pytest.raises(JudgeServerError, match="did not answer .* within 3 s"):
        server.start()
    assert server.proc is None  # stopped, not left behind


def test_a_server_that_dies_mid_run_stops_grading_at_once(fake_vllm, tmp_path):
    jp = JudgeParams(kind="openai", cache_path=None, max_retries=4, backoff_base_s=2.0, timeout_s=5)
    with JudgeServer(_params(fake_vllm), tmp_path / "s.log") as server:
        judge = server.attach(build_judge(server.judge_params(jp)))
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        t0 = time.monotonic()
        with pytest.raises(JudgeServerDied, match="exited with code -9"):
            _grade(judge, [GradingItem(CONV, "ice", CRITERIA)])
        # no retries with 2-20 s backoffs: the first refused connection asked the server
        assert time.monotonic() - t0 < 5


def test_no_vllm_executable_says_how_to_get_one(tmp_path, monkeypatch):
    import ruscarl_lib.judges.server as srv

    monkeypatch.delenv("RUSCARL_VLLM", raising=False)
    monkeypatch.setattr(srv, "project_root", lambda: tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JudgeServerError, match="setup_vllm_lane.sh"):
        find_vllm(str(tmp_path / "missing-vllm"))
