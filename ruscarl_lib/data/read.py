"""Reading rubric datasets: format detection, every row checked, the embedded sample, and the
dataset a params file names (a path, or an environment variable such as RUSCARL_HEALTHBENCH).

A bad row stops the load with the file, row and field (`strict=False` skips it and reports
it instead). Rows are counted from 0. In JSONL files a row is a physical line (blank lines are
skipped but still counted), so row r is line r + 1.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from ruscarl_lib.common.paths import resolve_path
from ruscarl_lib.data.rows import (
    FORMATS,
    PARSERS,
    DataValidationError,
    FieldError,
    RowError,
)
from ruscarl_lib.data.rubric import RubricExample

log = logging.getLogger(__name__)


DEFAULT_ENV_VAR = "RUSCARL_HEALTHBENCH"
SAMPLE_RESOURCE = "data/sample_medical.jsonl"


@dataclass
class LoadResult:
    """Examples that loaded, and the rows that were skipped (only with strict=False)."""

    examples: list[RubricExample]
    skipped: list[RowError]
    path: str
    format: str

    def summary(self) -> str:
        text = f"{self.path}: {len(self.examples)} examples ({self.format})"
        if self.skipped:
            text += f", {len(self.skipped)} rows skipped; first: {self.skipped[0]}"
        return text


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | FieldError]]:
    with _open_text(path) as fh:
        for row, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                yield row, FieldError("<line>", f"malformed JSON ({err.msg} at column "
                                                 f"{err.colno})")
                continue
            if not isinstance(record, dict):
                yield row, FieldError("<line>", f"expected a JSON object, got "
                                                 f"{type(record).__name__}")
                continue
            yield row, record


def _read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataValidationError(RowError(str(path), None, "<file>",
                                           f"cannot read as parquet ({err})")) from None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def detect_format(path: str | Path) -> str:
    """The layout of a dataset file, from its extension and the fields of its first record."""
    path = Path(path)
    if _is_parquet(path):
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(path).names)
        except Exception as err:
            raise DataValidationError(RowError(str(path), None, "<file>",
                                               f"cannot read as parquet ({err})")) from None
        if {"prompt", "reward_model"} <= names:
            return "verl_parquet"
        raise DataValidationError(RowError(
            str(path), None, "<columns>",
            f"not a verl rubric file: expected columns prompt and reward_model, found "
            f"{sorted(names)}"))
    for row, record in _iter_jsonl(path):
        if isinstance(record, FieldError):
            continue
        if "prompt" in record and "rubrics" in record:
            return "healthbench_jsonl"
        if "messages" in record and "rubric" in record:
            return "ruscarl_jsonl"
        raise DataValidationError(RowError(
            str(path), row, "<line>",
            f"cannot tell the format: expected HealthBench fields (prompt, rubrics) or "
            f"project fields (messages, rubric), found {sorted(record)}"))
    raise DataValidationError(RowError(str(path), None, "<file>",
                                       "no readable JSON records to detect the format from"))


def load_examples_with_report(
    path: str | Path,
    format: str = "auto",
    strict: bool = True,
    limit: int | None = None,
) -> LoadResult:
    """Load a dataset file and report skipped rows.

    `format`: "auto" (by extension and fields) or one of FORMATS. `strict=True` raises
    DataValidationError at the first bad row; `strict=False` skips bad rows and lists them in
    `LoadResult.skipped`. `limit` stops after that many good examples.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in PARSERS:
        raise ValueError(f"unknown dataset format {format!r}; expected 'auto' or one of "
                         f"{', '.join(FORMATS)}")
    parse = PARSERS[fmt]
    if fmt == "verl_parquet":
        rows: Iterable[tuple[int, Any]] = enumerate(_read_parquet_rows(path))
    else:
        rows = _iter_jsonl(path)

    examples: list[RubricExample] = []
    skipped: list[RowError] = []
    seen_ids: dict[str, int] = {}
    for row, record in rows:
        if limit is not None and len(examples) >= limit:
            break
        try:
            if isinstance(record, FieldError):
                raise record
            example, id_field = parse(record)
            if example.id in seen_ids:
                if id_field is not None:
                    raise FieldError(id_field, f"duplicate id {example.id!r} (first at row "
                                                f"{seen_ids[example.id]})")
                # Same conversation twice without ids: keep both, distinguish the ids.
                n = 2
                while f"{example.id}-{n}" in seen_ids:
                    n += 1
                example.id = f"{example.id}-{n}"
        except FieldError as err:
            error = RowError(str(path), row, err.field, err.message)
            if strict:
                raise DataValidationError(error) from None
            skipped.append(error)
            continue
        seen_ids[example.id] = row
        examples.append(example)
    if skipped:
        log.warning("%s: skipped %d bad rows; first: %s", path, len(skipped), skipped[0])
    return LoadResult(examples=examples, skipped=skipped, path=str(path), format=fmt)


def load_examples(
    path: str | Path,
    format: str = "auto",
    strict: bool = True,
    limit: int | None = None,
) -> list[RubricExample]:
    """Load a dataset file as RubricExamples (see load_examples_with_report)."""
    return load_examples_with_report(path, format=format, strict=strict, limit=limit).examples


def load_sample_dataset(limit: int | None = None) -> list[RubricExample]:
    """The small medical-advice dataset shipped with the package (written for this project)."""
    resource = resources.files("ruscarl_lib").joinpath(SAMPLE_RESOURCE)
    with resources.as_file(resource) as path:
        return load_examples(path, format="ruscarl_jsonl", strict=True, limit=limit)


def resolve_data_path(path: str | Path | None, env_var: str | None = DEFAULT_ENV_VAR
                      ) -> Path | None:
    """The dataset file to use: an explicit path, else `$env_var`, else None (the sample).

    A path that is configured but does not exist is an error, never a silent fallback.
    """
    if path is not None and str(path).strip():
        resolved = resolve_path(path)
        if not resolved.exists():
            raise FileNotFoundError(f"configured dataset path does not exist: {resolved}")
        return resolved
    if env_var:
        value = os.environ.get(env_var, "").strip()
        if value:
            resolved = resolve_path(value)
            if not resolved.exists():
                raise FileNotFoundError(
                    f"dataset path from environment variable {env_var} does not exist: "
                    f"{resolved}")
            return resolved
    return None


def load_dataset_from_params(data_params: Any) -> list[RubricExample]:
    """Examples as configured by a `DataParams` section (path, env var, format, strict, limit)."""
    path = resolve_data_path(data_params.path, data_params.path_env)
    if path is None:
        log.info("no dataset configured; using the embedded sample dataset")
        return load_sample_dataset(limit=data_params.limit)
    result = load_examples_with_report(path, format=data_params.format,
                                       strict=data_params.strict, limit=data_params.limit)
    if result.skipped:
        log.warning(result.summary())
    return result.examples
