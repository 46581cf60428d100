"""The scheduler: parents first, failures contained, finished runs kept, concurrency bounded, faults typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli, two_seed_study
from funclens.backends.inprocess import InProcessBackend
from funclens.backends.pool import PoolBackend
from funclens.config import DataCfg, ModelCfg, PruneCfg, QuantCfg, RunSpec, TrainCfg
from funclens.execute import RunContext
from funclens.schedule import Outcome, attempt, run_plan
from funclens.store import Store

DATA, MODEL = DataCfg("digits"), ModelCfg("lenet")


def trained(seed: int, **kw) -> RunSpec:
    return RunSpec("train", DATA, MODEL, TrainCfg(**{"epochs": 1, "lr": 0.02, "seed": seed, **kw}))


def quantized(parent: RunSpec, scheme: str = "8-bit") -> RunSpec:
    return RunSpec("quant", DATA, MODEL, parent=parent.run_id, compress=QuantCfg(scheme=scheme))


def pruned(parent: RunSpec, amount: float = 0.5) -> RunSpec:
    return RunSpec("prune", DATA, MODEL, parent=parent.run_id, compress=PruneCfg(amount=amount))


class ScriptedBackend:
    """Ends submitted runs in submission order, one per wait, without computing them; the runs named
    in ``fail`` fail. Records what the scheduler asked of it."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.fail = set(fail)
        self.workers: int | None = None
        self.submitted: list[str] = []
        self.running: list[str] = []
        self.most_at_once = 0
        self.submitted_before_parent_ended: list[str] = []
        self.closed = False
        self.specs: dict[str, RunSpec] = {}

    def start(self, workers: int, progress) -> None:
        self.workers = workers

    def submit(self, spec: RunSpec) -> None:
        if any(p in self.running for p in spec.parents):
            self.submitted_before_parent_ended.append(spec.run_id)
        self.submitted.append(spec.run_id)
        self.running.append(spec.run_id)
        self.most_at_once = max(self.most_at_once, len(self.running))

    def wait(self, timeout: float) -> list[Outcome]:
        rid = self.running.pop(0)
        if rid in self.fail:
            return [Outcome(rid, False, "internal", "RuntimeError: scripted")]
        return [Outcome(rid, True)]

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[RunSpec]]:
    """A base, an independent model and two compressions of the base, computed in this process."""
    out = tmp_path_factory.mktemp("sched") / "out"
    base = trained(0)
    specs = [base, trained(1), quantized(base), pruned(base)]
    seen: list[str] = []
    events: list[tuple] = []
    result = run_plan(specs, InProcessBackend(RunContext(out=str(out))), store=Store(out), jobs=1,
                      on_done=seen.append, progress=lambda *ev: events.append(ev))
    assert result.done == seen == [s.run_id for s in specs] and not result.failed and not result.skipped
    steps = (1437 + 63) // 64  # digits' training images in batches of 64
    assert (base.run_id, 1, 1, steps, steps) in events and {ev[0] for ev in events} == set(seen)
    return out, specs


def test_real_runs_finish_parents_first_and_are_done_in_the_store(finished):
    out, specs = finished
    store = Store(out)
    assert all(store.is_done(s.run_id) and not store.verify_run(s.run_id) for s in specs)
    assert store.load_preds(specs[2].run_id).shape == (360, 10)


def test_a_run_already_done_is_not_resubmitted_and_a_damaged_one_is(finished, tmp_path):
    import shutil

    out, specs = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    backend = ScriptedBackend()
    result = run_plan(specs, backend, store=Store(copy), jobs=4)
    assert result.done == [s.run_id for s in specs]
    assert backend.submitted == [] and backend.workers is None  # nothing to do: no worker is even started
    victim = copy / "runs" / specs[3].run_id / "preds" / "ep_000.npy"
    victim.write_bytes(victim.read_bytes()[:-5])
    backend = ScriptedBackend()
    result = run_plan(specs, backend, store=Store(copy), jobs=4)
    assert backend.submitted == [specs[3].run_id] and backend.workers == 1
    assert sorted(result.done) == sorted(s.run_id for s in specs)


def test_a_failed_runs_descendants_are_skipped_and_other_runs_go_on(tmp_path):
    a, other = trained(0), trained(1)
    b = pruned(a)
    c = quantized(b)  # a grandchild: skipped through its skipped parent
    d = quantized(other)
    backend = ScriptedBackend(fail=(a.run_id,))
    result = run_plan([a, other, b, c, d], backend, store=Store(tmp_path), jobs=2)
    assert list(result.failed) == [a.run_id] and result.failed[a.run_id].fault == "internal"
    assert sorted(result.skipped) == sorted([b.run_id, c.run_id])
    assert result.done == [other.run_id, d.run_id]
    assert b.run_id not in backend.submitted and c.run_id not in backend.submitted
    assert backend.submitted_before_parent_ended == [] and backend.closed


def test_jobs_bounds_the_runs_at_once_and_the_workers_started(tmp_path):
    specs = [trained(seed) for seed in range(5)]
    backend = ScriptedBackend()
    result = run_plan(specs, backend, store=Store(tmp_path), jobs=2)
    assert len(result.done) == 5 and backend.most_at_once == 2 and backend.workers == 2
    backend = ScriptedBackend()
    run_plan(specs, backend, store=Store(tmp_path), jobs=999)
    assert backend.workers == 5 and backend.most_at_once == 5  # never 999 workers for 5 runs


def test_a_pool_asked_for_999_jobs_starts_one_worker_per_run_left_and_gives_the_same_bytes(finished, tmp_path):
    out, specs = finished
    started: list[int] = []

    class CountingPool(PoolBackend):
        def start(self, workers, progress):
            started.append(workers)
            super().start(workers, progress)

    pooled = tmp_path / "pooled"
    result = run_plan(specs[:2], CountingPool(RunContext(out=str(pooled))), store=Store(pooled), jobs=999)
    assert result.done and not result.failed and started == [2]
    for s in specs[:2]:
        assert Store(pooled).load_preds(s.run_id).tobytes() == Store(out).load_preds(s.run_id).tobytes()


def test_an_input_error_is_an_input_fault_in_one_line(tmp_path):
    base = trained(0)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / base.run_id).write_text("a file where the run's folder belongs")
    outcome = attempt(base, RunContext(out=str(tmp_path)))
    assert (outcome.ok, outcome.fault, outcome.detail) == (False, "input", "")
    assert outcome.message.startswith("cannot create") and "\n" not in outcome.message


def test_an_internal_error_is_an_internal_fault_with_its_traceback(tmp_path):
    diverging = trained(0, lr=1e30)  # raises FloatingPointError, not a FunclensError
    result = run_plan([diverging, quantized(diverging)], InProcessBackend(RunContext(out=str(tmp_path))),
                      store=Store(tmp_path), jobs=1)
    outcome = result.failed[diverging.run_id]
    assert (outcome.ok, outcome.fault) == (False, "internal") and len(result.skipped) == 1
    assert outcome.message.startswith("FloatingPointError: training diverged at epoch 1")
    assert "Traceback" in outcome.detail and "\n" not in outcome.message


STUDY = two_seed_study("faults", train="lr = {lr}\n", distill="control = false\n")


def failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " failed: " in line]


def test_the_cli_exits_2_on_a_runs_input_error_with_one_line_for_it(tmp_path):
    from funclens.config import load_study_toml
    from funclens.plan import plan
    from funclens.study import pin_data

    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(lr=0.02))
    base = plan(pin_data(load_study_toml(study), RunContext(out=str(tmp_path))))[0].run_id  # as the command plans
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / base).write_text("a file where the run's folder belongs")
    r = run_cli("study", str(study), "--out", str(out), "--no-report", "--jobs", "2")
    assert r.returncode == 2, r.stderr
    assert failure_lines(r.stderr) == [f"run {base} failed: cannot create {out / 'runs' / base}: Not a directory"]
    assert "funclens: error: 1 run(s) failed, 1 skipped" in r.stderr and "Traceback" not in r.stderr


def test_the_cli_exits_1_on_a_runs_internal_error_and_shows_its_trace_with_debug(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(lr=1e30))
    out = tmp_path / "out"
    r = run_cli("study", str(study), "--out", str(out), "--no-report", "--jobs", "1")
    assert r.returncode == 1, r.stderr
    lines = failure_lines(r.stderr)
    assert len(lines) == 2 and all("failed: FloatingPointError: training diverged" in x for x in lines)
    assert "funclens: error: internal error" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--debug", "study", str(study), "--out", str(out), "--no-report", "--jobs", "1")
    assert r.returncode == 1 and "Traceback" in r.stderr and "raise FloatingPointError" in r.stderr


def test_jobs_below_one_is_refused_rather_than_skipping_every_run(tmp_path):
    from funclens.errors import ConfigError

    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        run_plan([trained(0)], ScriptedBackend(), store=Store(tmp_path), jobs=0)


def test_the_local_backends_never_import_ray():
    import subprocess
    import sys

    code = ("import sys, funclens.cli, funclens.study, funclens.backends.inprocess, funclens.backends.pool; "
            "print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr
