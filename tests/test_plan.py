"""funclens.plan: the runs a study needs, their roles and parents, and the one table of roles."""

from __future__ import annotations

import dataclasses

import pytest

from funclens.config import CustomCfg, preset_study
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
    study = dataclasses.replace(quick, prune_global=(0.5,), precision_check=True, finetune_epochs=1,
                                custom=(CustomCfg("mine", "mynets:squeeze"),), noise=(1.0,),
                                distill=dataclasses.replace(quick.distill, no_teacher=True, fresh_student=True))
    assert {r.role for r in plan(study)} == set(ROLES)
    assert len({r.letter for r in ROLES.values()}) == len({r.colour for r in ROLES.values()}) == len(ROLES)
    assert [ROLES[k].method for k in ("student", "control", "quantize", "prune")] == [
        "distill", "distill", "quantize", "prune"]
    # the letters of the paper's figures (B base, I independent, D distillation, Q quantization, P pruning)
    letters = {"base": "B", "independent": "I", "student": "D", "quantize": "Q", "prune": "P"}
    for r in plan(study):
        assert r.letter == letters.get(r.role, r.letter) and r.to_json()["role"] == r.role
    assert {r.letter for r in plan(study) if r.role in letters} == set(letters.values())
    assert [r.setting for r in plan(study) if r.role == "prune"][-1] == "global 50%"
    assert [r.setting for r in plan(study) if r.role == "finetune"][-1] == "global 50% + 1 ep fine-tune"


def test_no_control_without_students(quick):
    study = dataclasses.replace(quick, distill=dataclasses.replace(quick.distill, alphas=()))
    assert not [r for r in plan(study) if r.role in ("student", "control")]


def test_a_precision_check_plans_a_bf16_twin_of_every_seed_differing_in_precision_alone(quick):
    runs = plan(dataclasses.replace(quick, precision_check=True))
    fp32 = {r.seed: r for r in runs if r.role in ("base", "independent")}
    twins = [r for r in runs if r.role == "precision"]
    assert [r.setting for r in twins] == ["bf16 base"] + [f"bf16 seed={s}" for s in quick.seeds[1:]]
    for t in twins:
        assert t.spec.train.precision == "bf16" and not t.spec.parents
        assert t.spec == dataclasses.replace(fp32[t.seed].spec, train=dataclasses.replace(
            fp32[t.seed].spec.train, precision="bf16"))
        assert t.run_id != fp32[t.seed].run_id
    # the fp32 runs are the ones a study without the check plans
    assert [r.run_id for r in runs if r.role != "precision"] == [r.run_id for r in plan(quick)]
