"""What every notebook does first: read params, apply its parameters-cell overrides, make its
output folder, and import Unsloth when the run's backend resolves to it. Keeps the notebooks'
first cells to one line each.

Unsloth patches TRL, transformers and PEFT when imported and must come before them; the
notebooks' import cells only import modules that do not load those (tests/test_import_order.py
checks it), so this is the first place where the backend is known and nothing is late yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ruscarl_lib.params import Params, load_params, save_params
from ruscarl_lib.common.paths import resolve_path

#: Parameter values that mean "not set here, keep what the params file says": None, "" and -1.


def notebook_setup(
    params_file: str, output_dir: str | None, overrides: dict[str, Any] | None = None
) -> tuple[Params, Path]:
    """Load `params_file`, apply dotted overrides whose value is set, create `output_dir`.

    `output_dir=None` means the run folder `output.dir / output.run_name` (training notebooks).
    The effective params are written to `<output_dir>/params.yaml` so every executed notebook
    ships with the exact settings that produced it. A training run folder (`output_dir=None`)
    is left alone: `run_training` writes its params.yaml once it has checked that the folder's
    earlier run (if any) was made with the same settings.
    """
    chosen = {k: v for k, v in (overrides or {}).items() if not _is_unset(v)}
    params = load_params(resolve_path(params_file), overrides=chosen)
    out = resolve_path(output_dir if output_dir else Path(params.output.dir) / params.output.run_name)
    out.mkdir(parents=True, exist_ok=True)
    if output_dir:
        save_params(params, out / "params.yaml")
    from ruscarl_lib.common.backends import BackendUnavailable
    from ruscarl_lib.train.backend import prepare_backend

    try:
        prepare_backend(params.train)  # imports unsloth now when the backend resolves to it
    except BackendUnavailable as err:  # only training needs it; run_training raises it again
        logging.getLogger(__name__).warning("%s", err)
    return params, out


def _is_unset(value: Any) -> bool:
    if value is None or value == "":
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1
