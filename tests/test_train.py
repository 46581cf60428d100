import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from funclens.config import DataCfg, DistillCfg, ModelCfg, RunSpec, TrainCfg
from funclens.data import load_dataset
from funclens.train import infer, kd_loss, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def spec(distill=None, **kw) -> RunSpec:
    return RunSpec("train", DataCfg("digits"), ModelCfg("lenet"), TrainCfg(**{"epochs": 2, "lr": 0.02, **kw}), distill)


def collect(spec_, data, teacher=None, **kw):
    preds = []
    if teacher is not None:
        kw["teacher_logits"] = infer(teacher, data.train_x, data)
    model, hist = train(spec_, data, on_epoch=lambda e, p, r, c: preds.append(p), **kw)
    return model, hist, preds


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 1.5, 3.0]])
    y = torch.tensor([2])
    T, a = 3.0, 0.25
    ps = [math.exp(v / T) for v in (1.0, 2.0, 0.5)]
    pt = [math.exp(v / T) for v in (0.2, 1.5, 3.0)]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    sm = [math.exp(v) for v in (1.0, 2.0, 0.5)]
    ce = -math.log(sm[2] / sum(sm))
    assert float(kd_loss(s, t, y, a, T)) == pytest.approx(a * T * T * kl + (1 - a) * ce, rel=1e-6)


def test_training_is_deterministic_to_the_byte(digits):
    torch.set_num_threads(1)
    _, _, a = collect(spec(), digits)
    _, _, b = collect(spec(), digits)
    assert len(a) == 2 and all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert a[0].dtype == np.float16 and a[0].shape == (360, 10)


def test_predictions_are_the_test_softmax_in_dataset_order(digits):
    model, hist, preds = collect(spec(epochs=1), digits)
    logits = infer(model, digits.test_x, digits)
    assert np.array_equal(preds[-1], torch.softmax(logits, 1).numpy().astype(np.float16))
    assert hist[-1]["test_acc"] == pytest.approx(float((logits.argmax(1) == digits.test_y).float().mean()))
    assert hist[-1]["test_acc"] > 0.3  # chance is 0.1


def test_alpha_zero_distillation_is_plain_training_bit_for_bit(digits):
    teacher, _, _ = collect(spec(epochs=1), digits)
    _, _, plain = collect(spec(seed=5), digits)
    d = DistillCfg(teacher="train_x", alpha=0.0, init="fresh")
    _, _, student = collect(spec(d, seed=5), digits, teacher=teacher)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(plain, student))


def test_distillation_moves_the_student_toward_the_teacher(digits):
    teacher, _, tp = collect(spec(epochs=3), digits)
    d = DistillCfg(teacher="train_x", alpha=1.0, init="fresh")
    _, _, sp = collect(spec(d, seed=7, epochs=3), digits, teacher=teacher)
    _, _, ip = collect(spec(seed=7, epochs=3), digits)
    t, s, i = (p[-1].astype(np.float32) for p in (tp, sp, ip))
    assert np.abs(t - s).sum(1).mean() < np.abs(t - i).sum(1).mean()


def test_base_init_starts_from_the_given_weights(digits):
    inits = []
    base, _, _ = collect(spec(epochs=1), digits, on_init=inits.append)
    seen = []
    d = DistillCfg(teacher="train_x", alpha=0.5)
    collect(spec(d, seed=24, epochs=1), digits, teacher=base, init_state=inits[0], on_init=seen.append)
    assert all(torch.equal(inits[0][k], seen[0][k]) for k in inits[0])
    fresh = []
    collect(spec(seed=24, epochs=1), digits, on_init=fresh.append)
    assert not torch.equal(fresh[0]["conv1.weight"], inits[0]["conv1.weight"])


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(digits):
    ckpts = []
    _, _, full = collect(spec(epochs=3), digits)
    train(spec(epochs=3), digits, on_epoch=lambda e, p, r, c: ckpts.append(c) if e == 1 else None)
    rest = []
    train(spec(epochs=3), digits, resume=ckpts[0], on_epoch=lambda e, p, r, c: rest.append(p))
    assert [p.tobytes() for p in rest] == [p.tobytes() for p in full[1:]]


def test_kd_loss_alpha_zero_is_cross_entropy_exactly():
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert torch.equal(kd_loss(s, t, y, 0.0, 3.0), F.cross_entropy(s, y))


def test_channels_last_changes_only_rounding(digits):
    _, _, cl = collect(spec(seed=3), digits, channels_last=True)
    _, _, nchw = collect(spec(seed=3), digits, channels_last=False)
    for x, y in zip(cl, nchw):
        assert np.abs(x.astype(np.float32) - y.astype(np.float32)).max() < 2e-3
        assert (x.argmax(1) == y.argmax(1)).mean() > 0.99


def test_students_of_one_teacher_share_one_computation_of_its_logits(tmp_path):
    from funclens import execute
    from funclens.store import Store

    teacher = spec(epochs=1)
    ctx = execute.RunContext(out=str(tmp_path))
    execute.execute_run(teacher, ctx)
    store = Store(tmp_path)
    data = execute.preload_dataset(teacher.data, ctx)
    first = execute._teacher_logits(store, teacher.run_id, "lenet", teacher.data, data, ctx)
    assert execute._teacher_logits(store, teacher.run_id, "lenet", teacher.data, data, ctx) is first
    fresh = infer(execute._load_model(store, teacher.run_id, "lenet", data), data.train_x, data)
    assert torch.equal(first, fresh) and first.device == torch.device(ctx.device)


def test_a_student_run_trains_on_its_teachers_logits_computed_once(tmp_path, digits):
    # The run path (teacher logits from the store's teacher, once per process) gives the student that
    # train() gives with logits from the teacher model in hand: the one teacher path.
    from funclens import execute
    from funclens.store import Store

    teacher = spec(epochs=1)
    ctx = execute.RunContext(out=str(tmp_path))
    execute.execute_run(teacher, ctx)
    store = Store(tmp_path)
    student = spec(DistillCfg(teacher=teacher.run_id, alpha=0.9, init="fresh"), seed=2)
    execute.execute_run(student, ctx)
    model = execute._load_model(store, teacher.run_id, "lenet", digits)
    _, _, direct = collect(student, digits, teacher=model)
    assert store.load_preds(student.run_id).tobytes() == direct[-1].tobytes()
