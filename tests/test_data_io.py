"""Loading, validating and writing rubric datasets in every supported layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rubric_files import (
    healthbench_record,
    rich_examples,
    write_healthbench_jsonl,
    write_verl_dict_parquet,
    write_verl_numpy_str_parquet,
)
from ruscarl_lib.data.rows import DataValidationError
from ruscarl_lib.data.read import detect_format, load_dataset_from_params, load_examples, load_examples_with_report, load_sample_dataset, resolve_data_path
from ruscarl_lib.data.write import write_jsonl, write_verl_parquet
from ruscarl_lib.params import DataParams
from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.data.tags import normalize_tags

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, ()),
        (["level:example", "axis:accuracy"], ("level:example", "axis:accuracy")),
        (("axis:accuracy", "level:example"), ("axis:accuracy", "level:example")),
        ({"axis": "accuracy", "cluster": None, "level": "example"},
         ("level:example", "axis:accuracy")),
        ({"axis": "accuracy", "cluster": "", "level": "example"},
         ("level:example", "axis:accuracy")),
        ('{"axis": "accuracy", "cluster": " ", "level": "example"}', ("level:example", "axis:accuracy")),
        ({"axis": "completeness", "cluster": "hedging_x", "level": "cluster", "extra": "y"},
         ("level:cluster", "cluster:hedging_x", "axis:completeness", "extra:y")),
        ("['level:example' 'axis:accuracy']", ("level:example", "axis:accuracy")),
        (str(np.array(["level:cluster", "cluster:context_seeking_enough-context_helpful_safe",
                       "axis:completeness"])),
         ("level:cluster", "cluster:context_seeking_enough-context_helpful_safe",
          "axis:completeness")),
        ('["level:example", "axis:accuracy"]', ("level:example", "axis:accuracy")),
        ('{"axis": "accuracy", "level": "example"}', ("level:example", "axis:accuracy")),
        (np.array(["level:example", "axis:accuracy"]), ("level:example", "axis:accuracy")),
        (np.array([], dtype=object), ()),
        ("[]", ()),
        ("axis:accuracy", ("axis:accuracy",)),
        (["function:has_word", "parameters:a:b"], ("function:has_word", "parameters:a:b")),
    ],
)
def test_normalize_tags_accepts_every_form(raw, expected):
    assert normalize_tags(raw) == expected


def test_numpy_string_form_spans_lines_and_quotes():
    text = str(np.array(["level:cluster", "cluster:" + "x" * 70, "axis:it's"]))
    assert "\n" in text and '"axis:it\'s"' in text
    assert normalize_tags(text) == ("level:cluster", "cluster:" + "x" * 70, "axis:it's")


@pytest.mark.parametrize(
    "raw",
    [["axis accuracy"], [5], ["level:example", None], ["axis:"], [":x"], "['level:example' axis]",
     {"axis": 3}, 42, "no colon here", '{"axis": '],
)
def test_normalize_tags_rejects_malformed(raw):
    with pytest.raises(ValueError):
        normalize_tags(raw)


# ---------------------------------------------------------------------------- loaders


@pytest.fixture
def records():
    return [healthbench_record(i) for i in range(6)]


def test_healthbench_jsonl_loads_ids_tags_and_extras(tmp_path, records):
    path = write_healthbench_jsonl(tmp_path / "hb.jsonl", records)
    assert detect_format(path) == "healthbench_jsonl"
    examples = load_examples(path)
    assert [e.id for e in examples] == [f"hb-{i:04d}" for i in range(6)]
    e0 = examples[0]
    assert len(e0.messages) == 3 and e0.messages[-1]["content"] == "Answer 0 with  two spaces"
    assert e0.rubric[1] == Criterion("Explains the usual course of symptom 0.", 3,
                                     ("level:cluster", "cluster:hedging_case_0", "axis:accuracy"))
    assert e0.rubric[2].points == -6
    assert e0.tags == ["theme:hedging", "physician_agreed_category:enough-context"]
    assert e0.source == "healthbench"
    assert e0.extra["canary"] == "synthetic-canary-string"
    assert e0.extra["ideal_completions_data"]["ideal_completion"] == "Ideal answer 0"
    assert examples[1].extra["ideal_completions_data"] is None
    assert "completion" in e0.extra  # unknown fields kept


def _strip_to_verl_content(examples: list[RubricExample]):
    """What a verl file without ids or example tags can carry."""
    return [(e.messages, e.rubric) for e in examples]


def test_verl_dict_and_numpy_str_tags_match_healthbench(tmp_path, records):
    hb = load_examples(write_healthbench_jsonl(tmp_path / "hb.jsonl", records))
    as_dict = load_examples(write_verl_dict_parquet(tmp_path / "dict.parquet", records))
    as_str = load_examples(write_verl_numpy_str_parquet(tmp_path / "str.parquet", records))
    assert detect_format(tmp_path / "dict.parquet") == "verl_parquet"
    assert _strip_to_verl_content(as_dict) == _strip_to_verl_content(hb)
    assert _strip_to_verl_content(as_str) == _strip_to_verl_content(hb)
    for e in as_dict + as_str:
        assert e.source == "healthbench"
        assert e.extra == {}  # default ability/style/ground truth are not recorded as extras
        assert e.id.startswith("conv-")
    # Derived ids are stable across files and formats: a hash of the conversation.
    assert [e.id for e in as_dict] == [e.id for e in as_str]
    assert len({e.id for e in as_dict}) == len(records)


def test_verl_id_in_extra_info_is_used(tmp_path, records):
    table = pa.Table.from_pylist([
        {"prompt": r["prompt"], "data_source": "x", "ability": "a",
         "reward_model": {"ground_truth": "", "style": "rubric", "rubrics": r["rubrics"]},
         "extra_info": {"index": i, "prompt_id": r["prompt_id"]}}
        for i, r in enumerate(records)])
    pq.write_table(table, tmp_path / "ids.parquet")
    examples = load_examples(tmp_path / "ids.parquet")
    assert [e.id for e in examples] == [r["prompt_id"] for r in records]
    assert examples[2].extra == {"ability": "a", "extra_info": {"index": 2}}
    assert examples[2].tags == []


def test_duplicate_conversations_without_ids_get_distinct_ids(tmp_path, records):
    path = write_verl_dict_parquet(tmp_path / "dup.parquet", [records[1], records[1]])
    a, b = load_examples(path)
    assert b.id == a.id + "-2"


def test_format_detection_errors(tmp_path):
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataValidationError, match=r"odd\.jsonl row 0 \(0-based\).*cannot tell"):
        load_examples(odd)
    not_verl = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), not_verl)
    with pytest.raises(DataValidationError, match=r"plain\.parquet.*reward_model"):
        load_examples(not_verl)
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_examples(odd, format="csv")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_examples(tmp_path / "missing.jsonl")


def test_limit(tmp_path, records):
    path = write_healthbench_jsonl(tmp_path / "hb.jsonl", records)
    assert [e.id for e in load_examples(path, limit=2)] == ["hb-0000", "hb-0001"]


# ---------------------------------------------------------------------------- validation


def _good(i: int) -> dict:
    return {
        "id": f"r{i}",
        "messages": [{"role": "user", "content": f"q{i}"}],
        "rubric": [{"criterion": "Good thing.", "points": 5, "tags": ["axis:accuracy"]},
                   {"criterion": "Other thing.", "points": 3, "tags": []},
                   {"criterion": "Bad thing.", "points": -4, "tags": ["axis:accuracy"]}],
        "tags": ["theme:x"],
    }


def _with(**changes) -> dict:
    record = _good(2)
    for key, value in changes.items():
        if value is _DELETE:
            del record[key]
        else:
            record[key] = value
    return record


def _points(*values) -> list[dict]:
    return [{"criterion": f"c{i}", "points": v, "tags": []} for i, v in enumerate(values)]


_DELETE = object()

# (bad record at row 2, field named in the error, words in the message)
PROJECT_CASES = {
    "missing_rubric": (_with(rubric=_DELETE), "rubric", "missing rubric"),
    "empty_rubric": (_with(rubric=[]), "rubric", "empty rubric"),
    "no_positive": (_with(rubric=_points(-1, -2, 0)), "rubric", "positive points"),
    "string_points": (_with(rubric=_points(5, "five")), "rubric[1].points",
                      "not a number ('five')"),
    "bool_points": (_with(rubric=_points(True, 3)), "rubric[0].points", "not a number (True)"),
    "none_points": (_with(rubric=_points(3, None)), "rubric[1].points", "not a number (None)"),
    "empty_criterion": (_with(rubric=[{"criterion": "ok", "points": 2},
                                      {"criterion": "  ", "points": 1}]),
                        "rubric[1].criterion", "empty"),
    "unknown_role": (_with(messages=[{"role": "doctor", "content": "hi"}]),
                     "messages[0].role", "unknown role 'doctor'"),
    "ends_with_assistant": (_with(messages=[{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"}]),
                            "messages[1].role", "end with a user turn"),
    "empty_messages": (_with(messages=[]), "messages", "empty conversation"),
    "content_not_string": (_with(messages=[{"role": "user", "content": 7}]),
                           "messages[0].content", "not a string"),
    "tag_without_colon": (_with(rubric=[{"criterion": "c", "points": 2,
                                         "tags": ["axis accuracy"]}]),
                          "rubric[0].tags", "key:value"),
    "tag_not_string": (_with(rubric=[{"criterion": "c", "points": 2, "tags": [3]}]),
                       "rubric[0].tags", "not a string"),
    "bad_example_tag": (_with(tags=["hedging"]), "tags", "key:value"),
    "duplicate_id": (_with(id="r0"), "id", "duplicate id 'r0'"),
}


def _write_project_rows(path: Path, bad: dict | str) -> Path:
    lines = [json.dumps(_good(0)), json.dumps(_good(1)),
             bad if isinstance(bad, str) else json.dumps(bad), json.dumps(_good(3))]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", sorted(PROJECT_CASES))
def test_project_jsonl_errors_name_file_row_and_field(tmp_path, case):
    bad, field, words = PROJECT_CASES[case]
    path = _write_project_rows(tmp_path / f"{case}.jsonl", bad)
    with pytest.raises(DataValidationError) as info:
        load_examples(path, format="ruscarl_jsonl")
    message = str(info.value)
    assert f"{case}.jsonl row 2 (0-based) field {field}: " in message
    assert words in message
    assert info.value.error.row == 2 and info.value.error.field == field


def test_malformed_json_line(tmp_path):
    path = _write_project_rows(tmp_path / "broken.jsonl", '{"id": "r2", "messages": [')
    with pytest.raises(DataValidationError,
                       match=r"broken\.jsonl row 2 \(0-based\) field <line>: malformed JSON"):
        load_examples(path)
    path = _write_project_rows(tmp_path / "array.jsonl", "[1, 2]")
    with pytest.raises(DataValidationError, match=r"row 2 .*expected a JSON object"):
        load_examples(path)


def test_healthbench_jsonl_errors_use_its_field_names(tmp_path, records):
    records[3]["rubrics"][1]["points"] = "five"
    path = write_healthbench_jsonl(tmp_path / "hb_bad.jsonl", records)
    with pytest.raises(DataValidationError,
                       match=r"hb_bad\.jsonl row 3 \(0-based\) field rubrics\[1\]\.points: "
                             r"not a number \('five'\)"):
        load_examples(path)
    records[3]["rubrics"][1]["points"] = 3
    records[4]["prompt"][-1]["role"] = "assistant"
    path = write_healthbench_jsonl(tmp_path / "hb_bad2.jsonl", records)
    with pytest.raises(DataValidationError, match=r"row 4 \(0-based\) field prompt\[\d\]\.role"):
        load_examples(path)


def test_verl_errors_use_nested_field_names(tmp_path, records):
    records[1]["rubrics"][0]["tags"] = ["level:example", "accuracy"]
    path = write_verl_numpy_str_parquet(tmp_path / "verl_bad.parquet", records)
    with pytest.raises(DataValidationError,
                       match=r"verl_bad\.parquet row 1 \(0-based\) field "
                             r"reward_model\.rubrics\[0\]\.tags"):
        load_examples(path)
    records[1]["rubrics"][0]["tags"] = ["level:example"]
    for c in records[5]["rubrics"]:
        c["points"] = -abs(c["points"])
    path = write_verl_dict_parquet(tmp_path / "verl_neg.parquet", records)
    with pytest.raises(DataValidationError,
                       match=r"verl_neg\.parquet row 5 \(0-based\) field reward_model\.rubrics: "
                             r"no criterion has positive points"):
        load_examples(path)


def test_non_strict_skips_and_reports(tmp_path):
    rows = [_good(0), PROJECT_CASES["string_points"][0], _good(3),
            PROJECT_CASES["unknown_role"][0] | {"id": "r4"}, _good(5)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n\n{oops\n"
                    + "\n".join(json.dumps(r) for r in rows[3:]) + "\n")
    with pytest.raises(DataValidationError, match="row 1"):
        load_examples(path)
    result = load_examples_with_report(path, strict=False)
    assert [e.id for e in result.examples] == ["r0", "r3", "r5"]
    assert [(s.row, s.field) for s in result.skipped] == [
        (1, "rubric[1].points"), (4, "<line>"), (5, "messages[0].role")]
    assert all(s.file == str(path) for s in result.skipped)
    assert "3 examples" in result.summary() and "3 rows skipped" in result.summary()
    limited = load_examples_with_report(path, strict=False, limit=2)
    assert [e.id for e in limited.examples] == ["r0", "r3"]
    assert [s.row for s in limited.skipped] == [1]


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("writer", ["jsonl", "verl_dict", "verl_list"])
def test_round_trip_is_lossless(tmp_path, writer):
    examples = rich_examples()
    if writer == "jsonl":
        path = write_jsonl(examples, tmp_path / "out.jsonl")
    else:
        path = write_verl_parquet(examples, tmp_path / "out.parquet",
                                  tag_style=writer.split("_")[1])
    loaded = load_examples(path)
    assert loaded == examples
    assert isinstance(loaded[0].rubric[1].points, float) and loaded[0].rubric[1].points == 0.5
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left behind


def test_verl_dict_file_has_the_reference_layout(tmp_path):
    path = write_verl_parquet(rich_examples(), tmp_path / "out.parquet")
    table = pq.read_table(path)
    assert table.column_names[:5] == ["prompt", "data_source", "ability", "reward_model",
                                      "extra_info"]
    row = table.to_pylist()[1]
    assert row["ability"] == "medical_chat" and row["reward_model"]["style"] == "rubric"
    assert row["reward_model"]["rubrics"][0]["tags"] == {
        "axis": "context_awareness", "cluster": None, "level": "example"}
    assert row["extra_info"]["prompt"] == row["prompt"]
    assert row["extra_info"]["id"] == "ex-b"


def test_hand_written_verl_parquet_with_empty_cluster_strings(tmp_path):
    """Other converters write `cluster: ""` where the official files have no cluster."""
    import pyarrow as pa

    rubrics = [{"criterion": "Says to rest.", "points": 5.0,
                "tags": {"axis": "accuracy", "cluster": "", "level": "example"}},
               {"criterion": "Asks about fever.", "points": 3.0,
                "tags": {"axis": "completeness", "cluster": "context_seeking", "level": "cluster"}}]
    row = {"prompt": [{"role": "user", "content": "Headache?"}], "data_source": "hand", "ability": "medical_chat",
           "reward_model": {"style": "rubric", "ground_truth": "", "rubrics": rubrics},
           "extra_info": {"index": 7}}
    path = tmp_path / "hand.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    (ex,) = load_examples(path)
    assert ex.rubric[0].tags == ("level:example", "axis:accuracy")
    assert ex.rubric[1].tags == ("level:cluster", "cluster:context_seeking", "axis:completeness")


def test_list_style_keeps_any_tag_order_and_dict_style_refuses_repeats(tmp_path):
    ex = rich_examples()[1]
    ex.rubric[0] = Criterion("Two themes.", 4, ("axis:accuracy", "theme:a", "theme:b"))
    path = write_verl_parquet([ex], tmp_path / "list.parquet", tag_style="list")
    assert load_examples(path) == [ex]
    with pytest.raises(ValueError, match="tag_style='list'"):
        write_verl_parquet([ex], tmp_path / "dict.parquet", tag_style="dict")
    assert not (tmp_path / "dict.parquet").exists()


def test_healthbench_to_verl_to_jsonl_keeps_everything(tmp_path, records):
    original = load_examples(write_healthbench_jsonl(tmp_path / "hb.jsonl", records))
    via_verl = load_examples(write_verl_parquet(original, tmp_path / "hb.parquet"))
    assert via_verl == original
    via_jsonl = load_examples(write_jsonl(via_verl, tmp_path / "hb_project.jsonl"))
    assert via_jsonl == original


def test_foreign_verl_extras_survive_rewrite(tmp_path, records):
    rm = {"ground_truth": "42", "style": "rule", "rubrics": records[0]["rubrics"]}
    table = pa.Table.from_pylist([{
        "prompt": records[0]["prompt"], "data_source": "other", "ability": "chat",
        "reward_model": rm, "extra_info": {"index": 7, "split": "train"}, "weight": 0.5}])
    pq.write_table(table, tmp_path / "foreign.parquet")
    loaded = load_examples(tmp_path / "foreign.parquet")
    assert loaded[0].extra == {"ability": "chat", "reward_model_style": "rule",
                               "ground_truth": "42",
                               "extra_info": {"index": 7, "split": "train"},
                               "columns": {"weight": 0.5}}
    out = write_verl_parquet(loaded, tmp_path / "rewritten.parquet")
    row = pq.read_table(out).to_pylist()[0]
    assert row["extra_info"]["index"] == 7 and row["weight"] == 0.5
    assert row["reward_model"]["ground_truth"] == "42" and row["ability"] == "chat"
    assert load_examples(out) == loaded


def test_writers_refuse_invalid_examples_and_keep_old_file(tmp_path):
    target = tmp_path / "keep.jsonl"
    target.write_text("old content\n")
    bad = rich_examples()
    bad[1].messages.append({"role": "assistant", "content": "answer"})
    with pytest.raises(DataValidationError, match=r"keep\.jsonl row 1 .*'ex-b'"):
        write_jsonl(bad, target)
    assert target.read_text() == "old content\n"
    assert sorted(os.listdir(tmp_path)) == ["keep.jsonl"]


# ---------------------------------------------------------------------------- configuration


def test_resolve_data_path(tmp_path, monkeypatch):
    data = write_jsonl(rich_examples(), tmp_path / "d.jsonl")
    monkeypatch.delenv("RUSCARL_HEALTHBENCH", raising=False)
    assert resolve_data_path(None) is None
    assert resolve_data_path(str(data)) == data
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        resolve_data_path(tmp_path / "nope.jsonl")
    monkeypatch.setenv("RUSCARL_HEALTHBENCH", str(data))
    assert resolve_data_path(None) == data
    monkeypatch.setenv("MY_DATA", str(tmp_path / "gone.parquet"))
    with pytest.raises(FileNotFoundError, match=r"MY_DATA.*gone\.parquet"):
        resolve_data_path(None, "MY_DATA")


def test_load_dataset_from_params(tmp_path, monkeypatch):
    monkeypatch.delenv("RUSCARL_HEALTHBENCH", raising=False)
    sample = load_dataset_from_params(DataParams())
    assert len(sample) == 12
    assert len(load_dataset_from_params(DataParams(limit=3))) == 3
    data = write_jsonl(rich_examples(), tmp_path / "d.jsonl")
    assert load_dataset_from_params(DataParams(path=str(data))) == rich_examples()
    monkeypatch.setenv("RUSCARL_HEALTHBENCH", str(data))
    assert [e.id for e in load_dataset_from_params(DataParams())] == ["ex-a", "ex-b"]
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        load_dataset_from_params(DataParams(path=str(tmp_path / "absent.parquet")))


# ---------------------------------------------------------------------------- sample dataset


def test_sample_dataset_is_realistic():
    examples = load_sample_dataset()
    assert len(examples) == 12
    assert len({e.id for e in examples}) == 12
    axes = {"accuracy", "completeness", "communication_quality", "context_awareness",
            "instruction_following"}
    seen_axes, themes = set(), set()
    for e in examples:
        assert 6 <= len(e.rubric) <= 14
        assert any(c.points > 0 for c in e.rubric) and any(c.points < 0 for c in e.rubric)
        for c in e.rubric:
            assert c.tag_value("level") in ("example", "cluster")
            assert c.tag_value("axis") in axes
            seen_axes.add(c.tag_value("axis"))
        themes |= {t for t in e.tags if t.startswith("theme:")}
    assert seen_axes == axes
    assert {"theme:emergency_referrals", "theme:hedging", "theme:global_health"} <= themes
    multi = [e for e in examples if e.n_turns > 1]
    assert len(multi) == 2
    assert sum(e.messages[0]["role"] == "system" for e in examples) == 1


# ---------------------------------------------------------------------------- real data


def test_real_healthbench_500(healthbench_500_path):
    examples = load_examples(healthbench_500_path)
    criteria = [c for e in examples for c in e.rubric]
    assert len(examples) == 500
    assert len(criteria) == 5965
    assert sum(c.points < 0 for c in criteria) == 1859
    assert len({e.id for e in examples}) == 500
    assert all(e.messages[-1]["role"] == "user" for e in examples)
    assert all(c.tag_value("level") in ("example", "cluster") for c in criteria)
    assert sum(c.tag_value("cluster") is not None for c in criteria) == sum(
        c.tag_value("level") == "cluster" for c in criteria) > 0
