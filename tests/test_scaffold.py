"""Scaffold schedule, criterion selection and rendering (METHOD.md section 4)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from ruscarl_lib.params import ScaffoldParams
from ruscarl_lib.data.rubric import Criterion, RubricExample
from ruscarl_lib.scaffold.render import ScaffoldedPrompt, render_scaffold, scaffold_example
from ruscarl_lib.scaffold.schedule import ScaffoldSchedule, expected_criteria_shown, intra_group_ratio, step_decay
from ruscarl_lib.scaffold.selection import n_shown, select_criteria


def _sigmoid_by_hand(step: int, total: int, alpha: float = 125.0, t0: float = 0.2) -> float:
    t = min(max((step - 1) / (total - 1), 0.0), 1.0)
    return 1.0 / (1.0 + math.exp(alpha * (t - t0)))


# ---------------------------------------------------------------------------- intra-group


def test_linear_intra_group_spans_one_to_zero():
    assert [intra_group_ratio(i, 8) for i in range(8)] == pytest.approx(
        [7 / 7, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0.0]
    )
    assert intra_group_ratio(0, 1) == 1.0
    assert intra_group_ratio(0, 2) == 1.0 and intra_group_ratio(1, 2) == 0.0


def test_binary_intra_group():
    assert [intra_group_ratio(i, 8, "binary") for i in range(8)] == [1.0] * 4 + [0.0] * 4
    assert [intra_group_ratio(i, 5, "binary") for i in range(5)] == [1, 1, 0, 0, 0]
    assert [intra_group_ratio(i, 4, "binary", binary_k=1) for i in range(4)] == [1, 0, 0, 0]
    assert [intra_group_ratio(i, 4, "binary", binary_k=4) for i in range(4)] == [1] * 4
    assert [intra_group_ratio(i, 4, "binary", binary_k=0) for i in range(4)] == [0] * 4


@pytest.mark.parametrize(
    "args",
    [(-1, 8), (8, 8), (0, 0), (0, 4, "binary", 5), (0, 4, "binary", -1), (0, 4, "cubic")],
)
def test_intra_group_rejects_bad_input(args):
    with pytest.raises(ValueError):
        intra_group_ratio(*args)


# ---------------------------------------------------------------------------- step decay


def test_sigmoid_matches_method_worked_numbers():
    assert step_decay(71, 350) == pytest.approx(0.48, abs=0.01)
    for step in range(1, 59):
        assert step_decay(step, 350) > 0.98, step
    for step in range(84, 351):
        assert step_decay(step, 350) < 0.01, step
    # strictly decreasing through the transition
    vals = [step_decay(s, 350) for s in range(55, 90)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("step", [1, 2, 30, 58, 69, 70, 71, 72, 84, 200, 350])
@pytest.mark.parametrize("alpha,t0", [(125.0, 0.2), (50.0, 0.1), (10.0, 0.3)])
def test_sigmoid_matches_independent_formula(step, alpha, t0):
    assert step_decay(step, 350, alpha=alpha, t0=t0) == pytest.approx(
        _sigmoid_by_hand(step, 350, alpha, t0), rel=1e-12, abs=1e-300
    )


def test_sigmoid_does_not_overflow():
    with np.errstate(over="raise"):
        assert step_decay(350, 350, alpha=1e6, t0=0.0) == 0.0
        assert step_decay(1, 350, alpha=1e6, t0=1.0) == 1.0


def test_other_decay_rules():
    # t = (step-1)/(T-1): step 26 of 101 -> t = 0.25
    assert step_decay(26, 101, "constant") == 1.0
    assert step_decay(26, 101, "linear") == pytest.approx(0.75)
    assert step_decay(26, 101, "power") == pytest.approx(0.75**2)
    assert step_decay(26, 101, "power", power=3.0) == pytest.approx(0.75**3)
    assert step_decay(101, 101, "linear") == 0.0
    assert step_decay(1, 101, "linear") == 1.0


def test_progress_is_clipped_and_single_step_is_start():
    assert step_decay(0, 101, "linear") == 1.0
    assert step_decay(500, 101, "linear") == 0.0
    assert step_decay(1, 1, "linear") == 1.0
    assert step_decay(7, 1, "sigmoid") == pytest.approx(_sigmoid_by_hand(1, 2))  # t = 0
    with pytest.raises(ValueError):
        step_decay(1, 0)
    with pytest.raises(ValueError):
        step_decay(1, 10, "exponential")


# ---------------------------------------------------------------------------- schedule


def test_schedule_from_params_and_ratio():
    p = ScaffoldParams(intra_group="binary", binary_k=3, step_decay="linear", alpha=7.0, t0=0.5)
    s = ScaffoldSchedule.from_params(p)
    assert (s.intra_group, s.binary_k, s.step_decay, s.alpha, s.t0, s.power, s.enabled) == (
        "binary", 3, "linear", 7.0, 0.5, 2.0, True
    )
    assert s.ratio(2, 8, 26, 101) == pytest.approx(0.75)
    assert s.ratio(3, 8, 26, 101) == 0.0
    default = ScaffoldSchedule.from_params(ScaffoldParams())
    assert default == ScaffoldSchedule()
    assert default.ratio(1, 8, 71, 350) == pytest.approx(6 / 7 * _sigmoid_by_hand(71, 350))


def test_disabled_schedule_gives_zero():
    s = ScaffoldSchedule(enabled=False)
    assert s.ratio(0, 8, 1, 350) == 0.0
    assert not s.ratio_grid(8, 350).any()


def test_schedule_rejects_unknown_rule():
    with pytest.raises(ValueError):
        ScaffoldSchedule(step_decay="cosine")


@pytest.mark.parametrize(
    "sched",
    [
        ScaffoldSchedule(),
        ScaffoldSchedule(intra_group="binary", binary_k=2, step_decay="power", power=1.5),
        ScaffoldSchedule(step_decay="linear"),
        ScaffoldSchedule(step_decay="constant", t0=0.1),
    ],
)
def test_ratio_grid_matches_scalar_ratio(sched):
    G, T = 6, 40
    grid = sched.ratio_grid(G, T)
    assert grid.shape == (G, T)
    expected = np.array([[sched.ratio(i, G, t, T) for t in range(1, T + 1)] for i in range(G)])
    np.testing.assert_allclose(grid, expected, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------- n_shown


def test_n_shown_worked_example_and_bankers_rounding():
    s = ScaffoldSchedule()
    assert [n_shown(12, s.ratio(i, 8, 1, 350)) for i in range(8)] == [12, 10, 9, 7, 5, 3, 2, 0]
    assert n_shown(5, 0.5) == 2  # 2.5 rounds to even
    assert n_shown(7, 0.5) == 4  # 3.5 rounds to even
    assert n_shown(0, 1.0) == 0
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError):
            n_shown(4, bad)


# ---------------------------------------------------------------------------- selection


def _sel(n=12, ratio=0.5, seed=0, example_id="ex", step=1, group_position=0):
    return select_criteria(
        n, ratio, seed=seed, example_id=example_id, step=step, group_position=group_position
    )


def test_selection_size_sorted_unique_and_edges():
    for ratio in (0.0, 0.1, 0.5, 6 / 7, 1.0):
        got = _sel(ratio=ratio)
        assert len(got) == n_shown(12, ratio)
        assert got == sorted(set(got))
        assert all(0 <= i < 12 for i in got)
    assert _sel(ratio=1.0) == list(range(12))
    assert _sel(ratio=0.0) == []


def test_selection_is_reproducible_and_depends_on_every_coordinate():
    base = _sel()
    assert _sel() == base
    variants = {
        "seed": [_sel(seed=s) for s in range(1, 6)],
        "example_id": [_sel(example_id=f"ex{s}") for s in range(1, 6)],
        "step": [_sel(step=s) for s in range(2, 7)],
        "group_position": [_sel(group_position=s) for s in range(1, 6)],
    }
    # a 6-of-12 draw has 924 outcomes: changing any coordinate almost always changes it
    for name, draws in variants.items():
        assert sum(d != base for d in draws) >= 4, name
    # over many steps the draws are not all the same
    assert len({tuple(_sel(step=s)) for s in range(1, 50)}) > 30


def test_selection_stable_across_processes():
    """No salted hash(): a fresh interpreter with another PYTHONHASHSEED draws the same."""
    import os
    import subprocess
    import sys

    code = (
        "from ruscarl_lib.scaffold.selection import select_criteria as s;"
        "print(s(20, 0.4, seed=3, example_id='abc', step=7, group_position=2))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": str(h)},
        ).stdout.strip()
        for h in (1, 2)
    }
    assert outs == {str(select_criteria(20, 0.4, seed=3, example_id="abc", step=7, group_position=2))}


def test_selection_is_uniform():
    n, ratio, draws = 10, 0.3, 4000
    counts = np.zeros(n)
    for s in range(draws):
        counts[_sel(n=n, ratio=ratio, step=s)] += 1
    freq = counts / draws
    # each criterion chosen with probability k/n = 0.3; binomial sd ~ 0.0072
    assert np.all(np.abs(freq - 0.3) < 0.03), freq


def test_smaller_ratio_reveals_a_subset():
    big, small = _sel(ratio=0.75, step=9), _sel(ratio=0.25, step=9)
    assert set(small) <= set(big)


# ---------------------------------------------------------------------------- rendering

CRITERIA = [
    Criterion("Advises seeing a doctor if symptoms persist", 5, ("axis:completeness",)),
    Criterion("Recommends a specific prescription dose", -4, ("axis:accuracy",)),
    Criterion("Asks how long the fever has lasted", 3),
    Criterion("Uses alarming language", -1),
]
CONVO = [
    {"role": "user", "content": "My child has a fever."},
    {"role": "assistant", "content": "How old is your child?"},
    {"role": "user", "content": "Four years old."},
]


def _sections(text: str) -> tuple[str, str]:
    """Split the scaffold text into its include part and its avoid part."""
    assert "Include" in text
    inc_start = text.index("Include")
    avoid_start = text.index("Avoid") if "Avoid" in text else len(text)
    return text[inc_start:avoid_start], text[avoid_start:]


def test_render_sections_points_and_warning():
    before = copy.deepcopy(CONVO)
    out = render_scaffold(CONVO, CRITERIA)
    assert CONVO == before  # not mutated
    assert out[1:] == CONVO and out is not CONVO
    assert out[0]["role"] == "system"
    include, avoid = _sections(out[0]["content"])
    assert CRITERIA[0].text in include and CRITERIA[2].text in include
    assert CRITERIA[1].text in avoid and CRITERIA[3].text in avoid
    assert CRITERIA[1].text not in include and CRITERIA[0].text not in avoid
    assert "+5 points" in include and "+3 points" in include
    assert "-4 points" in avoid and "-1 point" in avoid
    assert "mention" in out[0]["content"].lower()
    assert "helpful" in out[0]["content"].lower()


def test_render_without_points_or_warning():
    with_all = render_scaffold(CONVO, CRITERIA)[0]["content"]
    bare = render_scaffold(CONVO, CRITERIA, show_points=False, warn_no_reveal=False)[0]["content"]
    assert "point" not in bare
    assert "mention" not in bare.lower()
    assert "mention" in with_all.lower()
    for c in CRITERIA:
        assert c.text in bare


def test_render_omits_empty_section():
    only_pos = render_scaffold(CONVO, [CRITERIA[0]])[0]["content"]
    assert "Include" in only_pos and "Avoid" not in only_pos
    only_neg = render_scaffold(CONVO, [CRITERIA[1]])[0]["content"]
    assert "Avoid" in only_neg and "Include" not in only_neg


def test_render_merges_with_existing_system_message():
    convo = [{"role": "system", "content": "You are a careful nurse."}, *CONVO]
    before = copy.deepcopy(convo)
    out = render_scaffold(convo, CRITERIA)
    assert convo == before
    assert [m["role"] for m in out].count("system") == 1
    assert len(out) == len(convo)
    assert out[0]["content"].startswith("You are a careful nurse.")
    assert CRITERIA[0].text in out[0]["content"]
    assert out[1:] == convo[1:]


def test_empty_criteria_leave_conversation_identical():
    convo = [{"role": "system", "content": "Sys"}, *CONVO]
    out = render_scaffold(convo, [])
    assert out == convo and out is not convo
    out[0]["content"] = "changed"
    assert convo[0]["content"] == "Sys"


def test_multiline_criterion_stays_one_bullet():
    out = render_scaffold(CONVO, [Criterion("First line\n  second line", 2)])[0]["content"]
    assert "- First line second line (+2 points)" in out


# ---------------------------------------------------------------------------- example level


def _example(n: int = 12) -> RubricExample:
    rubric = [Criterion(f"criterion number {i}", (-2 if i % 4 == 3 else i + 1)) for i in range(n)]
    return RubricExample(id="hb-1", messages=copy.deepcopy(CONVO), rubric=rubric)


def test_scaffold_example_matches_selection_and_rendering():
    ex = _example()
    sp = scaffold_example(ex, 0.5, seed=4, step=3, group_position=1)
    assert isinstance(sp, ScaffoldedPrompt)
    assert sp.ratio == 0.5
    assert sp.shown == select_criteria(12, 0.5, seed=4, example_id="hb-1", step=3, group_position=1)
    assert sp.messages == render_scaffold(ex.messages, [ex.rubric[i] for i in sp.shown])
    sysmsg = sp.messages[0]["content"]
    for i in range(12):
        # "criterion number 1" is a prefix of "criterion number 10", so match the bullet
        assert (f"- criterion number {i} (" in sysmsg) == (i in sp.shown)
    assert ex.messages == CONVO


def test_scaffold_example_ratio_zero_is_clean():
    ex = _example()
    sp = scaffold_example(ex, 0.0, seed=0, step=1, group_position=7)
    assert sp.shown == [] and sp.messages == ex.messages


# ---------------------------------------------------------------------------- dataset view


def test_expected_criteria_shown_by_hand():
    sched = ScaffoldSchedule()
    sizes = [12, 12, 5, 7]
    got = expected_criteria_shown(sizes, sched, 8, 350)
    assert got.shape == (8, 350)
    by_hand = np.array(
        [
            [np.mean([n_shown(n, sched.ratio(i, 8, t, 350)) for n in sizes]) for t in (1, 71, 350)]
            for i in range(8)
        ]
    )
    np.testing.assert_allclose(got[:, [0, 70, 349]], by_hand)
    # at step 1: (12 + 12 + 5 + 7)/4 = 9 for the first sample; nothing for the last
    assert got[0, 0] == 9.0 and got[7, 0] == 0.0
    assert not expected_criteria_shown(sizes, ScaffoldSchedule(enabled=False), 8, 350).any()


def test_scaffold_example_passes_rendering_options():
    ex = _example()
    sp = scaffold_example(
        ex, 1.0, seed=0, step=1, group_position=0, show_points=False, warn_no_reveal=False
    )
    assert sp.messages == render_scaffold(
        ex.messages, ex.rubric, show_points=False, warn_no_reveal=False
    )
    assert "point" not in sp.messages[0]["content"]
    assert "mention" not in sp.messages[0]["content"].lower()


def test_schedule_table_shows_the_fade_out_around_t0():
    from ruscarl_lib.scaffold.schedule import schedule_table

    table = schedule_table(ScaffoldSchedule(), 8, 350, n_criteria=12)
    assert table["step"].tolist() == [1, 57, 71, 85, 350]
    assert table.iloc[0]["shown of 12"] == [12, 10, 9, 7, 5, 3, 2, 0]
    assert abs(table.set_index("step").loc[71, "decay"] - 0.4821) < 1e-3
    assert table.iloc[-1]["shown of 12"] == [0] * 8
