"""What a batch-run notebook is doing, shown on the terminal that started it.

Why: under papermill the kernel is a child process whose output goes into the executed
notebook, so the terminal only ever saw "cell 4/10" while a stage trained for minutes. The
library now appends small JSON events (training step k/N with the last reward, evaluation
batches, judge calls and failures) to the file named by RUSCARL_PROGRESS_FILE, which
`reports.run_notebook` sets for its kernel; `ProgressLine` in the parent polls that file and
draws one terminal line. Without the variable every `emit` is a no-op, so interactive
sessions and tests pay nothing. Progress must never break a run: write errors are ignored.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

ENV_VAR = "RUSCARL_PROGRESS_FILE"

_last_emit: dict[str, float] = {}


def emit(kind: str, *, every_s: float = 0.0, force: bool = False, path: str | None = None,
         **fields: Any) -> None:
    """Append one event line; with `every_s`, at most one event of this kind per interval.

    The file is `path`, else $RUSCARL_PROGRESS_FILE; with neither, nothing happens.
    """
    path = path or os.environ.get(ENV_VAR)
    if not path:
        return
    now = time.time()
    if every_s and not force and now - _last_emit.get(kind, 0.0) < every_s:
        return
    _last_emit[kind] = now
    line = json.dumps({"t": round(now, 3), "kind": kind, **fields}, default=str) + "\n"
    try:
        # one write() of a short line under O_APPEND: readers never see half a line
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def enabled() -> bool:
    return bool(os.environ.get(ENV_VAR))


# --------------------------------------------------------------------------------------------
# Kernel side: a trainer callback
# --------------------------------------------------------------------------------------------


def progress_callback(phase: str, optimizer_steps_per_unit: int = 1):
    """A transformers TrainerCallback emitting `train` events (`phase` is "sft" or "rl").

    RL steps are counted in `optimizer_steps_per_unit` optimizer steps; the ETA is measured on
    this session's steps only, so a resumed run does not count the checkpoint's steps as fast.
    """
    from transformers import TrainerCallback

    per = max(1, int(optimizer_steps_per_unit))

    class _Progress(TrainerCallback):
        def __init__(self) -> None:
            self.t0: float | None = None
            self.first_step = 0
            self.last: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.first_step = time.perf_counter(), state.global_step
            emit("train", phase=phase, step=state.global_step // per,
                 total=math.ceil(state.max_steps / per), force=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("reward", "loss"):
                if logs and isinstance(logs.get(key), (int, float)):
                    self.last[key] = float(logs[key])

        def on_step_end(self, args, state, control, **kwargs):
            step, total = math.ceil(state.global_step / per), math.ceil(state.max_steps / per)
            done = state.global_step - self.first_step
            eta = None
            if self.t0 is not None and done > 0:
                eta = (time.perf_counter() - self.t0) / done * (state.max_steps - state.global_step)
            emit("train", phase=phase, step=step, total=total, eta_s=None if eta is None else round(eta, 1),
                 every_s=0.5, force=state.global_step >= state.max_steps, **self.last)

    return _Progress()


# --------------------------------------------------------------------------------------------
# Parent side: one terminal line
# --------------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(events: dict[str, dict[str, Any]], label: str, elapsed_s: float) -> str:
    """The line for the latest event of each kind: training, else evaluation; judge appended."""
    cell = events.get("cell")
    where = f" cell {cell['index']}/{cell['total']}" if cell else ""
    parts = [f"[{label}{where} {_duration(elapsed_s)}]"]
    train, gen, judge = events.get("train"), events.get("generate"), events.get("judge")
    latest = max((e for e in (train, gen) if e), key=lambda e: (e["t"], e.get("_seq", 0)), default=None)
    if latest is not None and latest is train:
        name = {"sft": "SFT", "rl": "RL"}.get(train.get("phase"), str(train.get("phase")))
        text = f"{name} step {train['step']}/{train['total']}"
        if train.get("reward") is not None:
            text += f" reward {train['reward']:.3f}"
        elif train.get("loss") is not None:
            text += f" loss {train['loss']:.3f}"
        if train.get("step", 0) < train.get("total", 0):
            text += f" ETA {_duration(train.get('eta_s'))}"
        parts.append(text)
    elif latest is not None:
        parts.append(f"{gen.get('what', 'generating')} {gen['done']}/{gen['total']} answers")
    if judge:
        text = f"judge {judge['criteria']} criteria"
        if judge.get("calls"):
            text += f", {judge['calls']} calls"
        text += f", {judge['failed']} failed"
        parts.append(text)
    return " | ".join(parts)


class ProgressLine:
    """Polls a progress file in a thread and keeps one terminal line up to date.

    On a terminal the line is redrawn in place; elsewhere (CI logs, pipes, several notebooks
    at once) a line is printed when the activity changes and at most every `log_every_s`
    seconds, so logs stay short.
    `events` keeps every event read, for callers and tests.
    """

    def __init__(self, path: str | Path, label: str, stream: TextIO | None = None,
                 poll_s: float = 0.5, log_every_s: float = 30.0,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path, self.label = Path(path), label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.poll_s, self.log_every_s, self.on_event = poll_s, log_every_s, on_event
        self.events: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._shown = ""
        self._shown_key: tuple = ()
        self._shown_at = 0.0

    _active = 0  # lines drawn at once (a parallel sweep): more than one means log mode
    _lock = threading.Lock()

    def __enter__(self) -> "ProgressLine":
        with ProgressLine._lock:
            ProgressLine._active += 1
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="ruscarl-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        self._draw(final=True)
        with ProgressLine._lock:
            ProgressLine._active -= 1

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()
            self._draw()

    def poll(self) -> None:
        """Read the events appended since the last poll."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            event["_seq"] = len(self.events)  # arrival order breaks equal timestamps
            self.events.append(event)
            self.latest[event.get("kind", "?")] = event
            if self.on_event is not None:
                self.on_event(event)

    def _draw(self, final: bool = False) -> None:
        if not self.latest:
            if final and self.tty and self._shown:
                self.stream.write("\n")
            return
        line = render(self.latest, self.label, time.perf_counter() - self._t0)
        if self.tty and ProgressLine._active <= 1:
            width = 160
            self.stream.write("\r" + line[:width] + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
            self._shown = line
            return
        # activity: which kind and phase is current; a change prints at once
        train = self.latest.get("train", {})
        key = (train.get("phase"), "generate" in self.latest, final)
        now = time.perf_counter()
        if line != self._shown and (key != self._shown_key or final or now - self._shown_at >= self.log_every_s):
            print(line, file=self.stream, flush=True)
            self._shown, self._shown_key, self._shown_at = line, key, now
