"""funclens.plan: the runs a study needs, their roles and parents, and the one table of roles."""

from __future__ import annotations

import dataclasses

import pytest

from funclens.config import preset_study
from funclens.plan import ROLES, plan


@pytest.fixture
def quick():
    return preset_study("quick")


def test_quick_plan_has_every_role_once_per_setting(quick):
    runs = plan(quick)
    roles = [r.role for r in runs]
    assert roles[0] == "base" and roles.count("base") == 1
    assert roles.count("independent") == len(quick.seeds) - 1
    assert roles.count("student") == len(quick.distill.alphas) * len(quick.distill.seeds)
    assert roles.count("control") == 1
    assert [r.setting for r in runs if r.role == "quantize"] == list(quick.quantize)
    assert [r.setting for r in runs if r.role == "prune"] == [f"{round(a * 100)}%" for a in quick.prune]
    assert len({r.run_id for r in runs}) == len(runs)


def test_parents_come_first_and_every_compression_starts_from_the_base(quick):
    runs = plan(quick)
    seen: set[str] = set()
    base = runs[0].run_id
    for r in runs:
        assert set(r.spec.parents) <= seen, r
        seen.add(r.run_id)
        if r.role in ("quantize", "prune"):
            assert r.spec.parent == base
        if r.role == "student":
            assert r.spec.distill.teacher == base
    control = next(r for r in runs if r.role == "control")
    indep = next(r for r in runs if r.role == "independent")
    assert control.spec.distill.teacher == indep.run_id   # taught by an independent model, not the base


def test_every_planned_role_is_in_the_roles_table_with_distinct_letters_and_colours(quick):
    study = dataclasses.replace(quick, prune_global=(0.5,))
    assert {r.role for r in plan(study)} == set(ROLES)
    assert len({r.letter for r in ROLES.values()}) == len({r.colour for r in ROLES.values()}) == len(ROLES)
    assert [ROLES[k].method for k in ("student", "control", "quantize", "prune")] == [
        "distill", "distill", "quantize", "prune"]
    for r in plan(study):
        assert r.letter == ROLES[r.role].letter and r.to_json()["role"] == r.role
    assert [r.setting for r in plan(study) if r.role == "prune"][-1] == "global 50%"


def test_no_control_without_students(quick):
    study = dataclasses.replace(quick, distill=dataclasses.replace(quick.distill, alphas=()))
    assert not [r for r in plan(study) if r.role in ("student", "control")]
