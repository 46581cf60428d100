"""The paper-mnist pipeline as a research script usually writes it: the baseline funclens is measured against.

It does the same work as a funclens study of LeNet on MNIST, the plain way:

- data: a per-item ``torch.utils.data.Dataset`` that turns each uint8 image into a PIL image and runs
  ``transforms.Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``, batched by
  ``DataLoader(shuffle=True, batch_size=64, num_workers=0)`` (torchvision's MNIST example);
- training: LeNet from ``funclens.models.create_model`` (the same model), SGD lr 0.01 momentum 0.9, one run
  after another, torch's default threads; after every epoch the test softmax goes through a test DataLoader
  (batch 1000) and is written with ``np.save``;
- self-distillation from the base (same weights to start from as the base, ``base-init``), the teacher's
  forward pass recomputed at every step;
- post-hoc 16-bit and 8-bit (symmetric, per channel) weight quantization and per-layer L1 pruning with
  ``torch.nn.utils.prune``;
- analysis: accuracy, distances to the base, RFD with a 1000-sample bootstrap, disagreement and Jensen-Shannon
  divergence between every pair of checkpoints in a Python loop over pairs, and t-SNE
  (``sklearn.manifold.TSNE``) of the raw flattened prediction vectors, saved as a figure and tables.

MNIST is read from its canonical IDX files with ``funclens.data.read_idx``, the reader funclens itself uses:
reading files is not what is measured (about a second either way), so both sides share it.

Run alone (``benchmarks/run.py`` imports :func:`run_pipeline` and interleaves it with funclens):
    .venv/bin/python benchmarks/baseline.py --train-subset 12000 --test-subset 2000 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from funclens.data import read_idx
from funclens.models import create_model

# benchmarks/ -> repo root -> its parent, where the shared data folder sits beside the checkout
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # the constants every MNIST example hard-codes


@dataclass(frozen=True)
class BaselineCfg:
    """The work to do; defaults are the reduced paper-mnist study of ``benchmarks/run.py``."""

    data_dir: Path = DEFAULT_DATA_DIR
    train_subset: int = 12000  # first N training images (0: all 60,000)
    test_subset: int = 2000  # first N test images (0: all 10,000)
    epochs: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)  # the first is the base
    alphas: tuple[float, ...] = (0.5,)
    student_seeds: tuple[int, ...] = (2, 24, 42)
    temperature: float = 3.0
    quantize: tuple[str, ...] = ("16-bit", "8-bit")
    prune: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    test_batch_size: int = 1000
    n_boot: int = 1000


# ---------------------------------------------------------------- data


def idx_path(folder: Path, stem: str) -> Path:
    """The IDX file ``stem`` in ``folder``: raw if present, else gzipped."""
    raw = folder / stem
    return raw if raw.is_file() else folder / (stem + ".gz")


def read_mnist(data_dir: Path, train_subset: int = 0, test_subset: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as uint8 images ``[N, 28, 28]`` and int64 labels, train then test.

    Args:
        data_dir: the folder holding ``mnist/`` with the four IDX files (raw or ``.gz``).
        train_subset, test_subset: keep the first N images (0: all).

    Example:
        >>> trx, try_, tex, tey = read_mnist(DEFAULT_DATA_DIR, 100, 10)
        >>> trx.shape, tex.dtype
        ((100, 28, 28), dtype('uint8'))
    """
    folder = Path(data_dir) / "mnist"
    trx = read_idx(idx_path(folder, "train-images-idx3-ubyte"))
    try_ = read_idx(idx_path(folder, "train-labels-idx1-ubyte")).astype(np.int64)
    tex = read_idx(idx_path(folder, "t10k-images-idx3-ubyte"))
    tey = read_idx(idx_path(folder, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if train_subset:
        trx, try_ = trx[:train_subset], try_[:train_subset]
    if test_subset:
        tex, tey = tex[:test_subset], tey[:test_subset]
    return trx, try_, tex, tey


class MNISTImages(Dataset):
    """One image at a time, as torchvision's MNIST does: uint8 array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])  # 2-D uint8 -> mode "L"
        return self.transform(img), int(self.labels[i])


def make_loaders(trx: np.ndarray, try_: np.ndarray, tex: np.ndarray, tey: np.ndarray, cfg: BaselineCfg
                 ) -> tuple[DataLoader, DataLoader]:
    """The shuffled training loader and the in-order test loader."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    train = DataLoader(MNISTImages(trx, try_, tf), batch_size=cfg.batch_size, shuffle=True, num_workers=0)
    test = DataLoader(MNISTImages(tex, tey, tf), batch_size=cfg.test_batch_size, shuffle=False, num_workers=0)
    return train, test


# ---------------------------------------------------------------- training


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """Hinton et al.'s loss, as funclens defines it: ``alpha T^2 KL(t || s) + (1 - alpha) CE(s, y)``."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean")
    return alpha * t * t * soft + (1 - alpha) * F.cross_entropy(student, labels)


def evaluate(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, float]:
    """Test softmax ``[N, C]`` float32 in dataset order, and accuracy."""
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            probs.append(F.softmax(model(x), dim=1))
            labels.append(y)
    p = torch.cat(probs).numpy()
    return p, float((p.argmax(1) == torch.cat(labels).numpy()).mean())


def train_model(model: nn.Module, train_loader: DataLoader, test_loader: DataLoader, cfg: BaselineCfg,
                pred_dir: Path, name: str, teacher: nn.Module | None = None, alpha: float = 0.0) -> list[dict]:
    """Train ``model`` in place; after each epoch save the test softmax to ``pred_dir/<name>_epNNN.npy``.

    Returns one dict per epoch: ``images``, ``train_seconds`` (the training loop only, including the
    DataLoader's per-item transforms and the teacher's forward passes), ``start`` and ``end`` (``time.time()``
    when the loop started and when the epoch's predictions were saved) and ``test_acc``.
    """
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    if teacher is not None:
        teacher.eval()
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start, t0, seen = time.time(), time.perf_counter(), 0
        for x, y in train_loader:
            out = model(x)
            if teacher is None:
                loss = F.cross_entropy(out, y)
            else:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = distillation_loss(out, t_out, y, alpha, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        train_seconds = time.perf_counter() - t0
        probs, acc = evaluate(model, test_loader)
        np.save(pred_dir / f"{name}_ep{epoch:03d}.npy", probs)
        history.append({"epoch": epoch, "images": seen, "train_seconds": train_seconds, "start": start,
                        "end": time.time(), "test_acc": acc})
    return history


# ---------------------------------------------------------------- post-hoc compression


def quantize_model(model: nn.Module, scheme: str) -> nn.Module:
    """A copy whose Conv and Linear weights are rounded to fp16 (``16-bit``) or symmetric per-channel int8
    (``8-bit``) and stored back in fp32."""
    q = copy.deepcopy(model)
    for m in q.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.data
            if scheme == "16-bit":
                m.weight.data = w.half().float()
            elif scheme == "8-bit":
                scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / 127
                scale[scale == 0] = 1.0
                m.weight.data = torch.clamp(torch.round(w / scale), -127, 127) * scale
            else:
                raise ValueError(f"unknown scheme {scheme}")
    return q


def prune_model(model: nn.Module, amount: float) -> nn.Module:
    """A copy with ``amount`` of every Conv and Linear layer's weights zeroed by L1 magnitude."""
    p = copy.deepcopy(model)
    for m in p.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=amount)
            prune.remove(m, "weight")
    return p


# ---------------------------------------------------------------- analysis


def disagreement(p: np.ndarray, q: np.ndarray) -> float:
    return float((p.argmax(1) != q.argmax(1)).mean())


def js_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """Mean Jensen-Shannon divergence in bits."""
    m = 0.5 * (p + q)
    kl_pm = np.sum(p * np.log2((p + eps) / (m + eps)), axis=1)
    kl_qm = np.sum(q * np.log2((q + eps) / (m + eps)), axis=1)
    return float(np.mean(0.5 * (kl_pm + kl_qm)))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(0.5 * np.abs(p - q).sum(axis=1)))


def pairwise_loop(preds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Disagreement and JS matrices ``[M, M]``, one pair of checkpoints at a time."""
    m = len(preds)
    dis, js = np.zeros((m, m)), np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            dis[i, j] = dis[j, i] = disagreement(preds[i], preds[j])
            js[i, j] = js[j, i] = js_divergence(preds[i], preds[j])
    return dis, js


def tsne_raw(preds: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """t-SNE of the raw flattened prediction vectors ``[M, N*C]`` (same perplexity rule as funclens)."""
    from sklearn.manifold import TSNE

    x = np.stack([p.reshape(-1) for p in preds]).astype(np.float32, copy=False)
    perplexity = min(30.0, (len(preds) - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(x)


def bootstrap_rfd(base: np.ndarray, members: list[np.ndarray], indeps: list[np.ndarray], n_boot: int,
                  seed: int) -> list[float]:
    """95% percentile interval of disagreement(base, members) / disagreement(base, independents)."""
    rng = np.random.default_rng(seed)
    n = len(base)
    ratios = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        num = np.mean([disagreement(base[idx], m[idx]) for m in members])
        den = np.mean([disagreement(base[idx], i[idx]) for i in indeps])
        ratios.append(num / den if den > 0 else np.nan)
    return [float(v) for v in np.nanpercentile(ratios, [2.5, 97.5])]


def compare_rows(final: dict[str, np.ndarray], runs: list[dict], labels: np.ndarray, n_boot: int
                 ) -> tuple[float, float, list[dict]]:
    """The base's accuracy, the independents' mean disagreement with it, and one row per (role, setting).

    Args:
        final: each run's final test softmax by name.
        runs: as :func:`analyse`'s.
        labels: test labels.
        n_boot: bootstrap samples per row.
    """
    base_run = next(r for r in runs if r["role"] == "base")
    base = final[base_run["name"]]
    base_acc = float((base.argmax(1) == labels).mean())
    indeps = [final[r["name"]] for r in runs if r["role"] == "independent"]
    reference = float(np.mean([disagreement(base, i) for i in indeps]))

    groups: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        if r["role"] != "base":
            groups.setdefault((r["role"], r["setting"]), []).append(r["name"])
    rows = []
    for k, ((role, setting), names) in enumerate(groups.items()):
        members = [final[n] for n in names]
        accs = [float((m.argmax(1) == labels).mean()) for m in members]
        d = float(np.mean([disagreement(base, m) for m in members]))
        rows.append({"method": role, "setting": setting, "accuracy": float(np.mean(accs)),
                     "accuracy_deviation_pct": float(np.mean([100 * (a - base_acc) / base_acc for a in accs])),
                     "disagreement": d, "js": float(np.mean([js_divergence(base, m) for m in members])),
                     "tv": float(np.mean([total_variation(base, m) for m in members])),
                     "rfd": d / reference if reference > 0 else math.nan,
                     "rfd_ci": bootstrap_rfd(base, members, indeps, n_boot, seed=k)})
    return base_acc, reference, rows


def landscape_figure(roles: list[str], coords: np.ndarray, path: Path) -> None:
    """A scatter of the t-SNE coordinates, one colour per role, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    colours = {"base": "black", "independent": "tab:blue", "student": "tab:green", "quantize": "tab:red",
               "prune": "tab:purple"}
    for role, colour in colours.items():
        idx = [i for i, r in enumerate(roles) if r == role]
        ax.scatter(coords[idx, 0], coords[idx, 1], c=colour, label=role, s=15)
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyse(runs: list[dict], labels: np.ndarray, out_dir: Path, n_boot: int) -> dict:
    """Tables, pairwise matrices, landscape figure and summary of a finished set of runs.

    Args:
        runs: dicts with ``name``, ``role`` (base, independent, student, quantize, prune), ``setting`` and
            ``files`` (the run's prediction files, last one final).
        labels: test labels.
        out_dir: where ``summary.json``, ``table.csv``, ``pairwise.npz`` and ``landscape.png`` go.
        n_boot: bootstrap samples per row.
    """
    final = {r["name"]: np.load(r["files"][-1]) for r in runs}
    base_acc, reference, rows = compare_rows(final, runs, labels, n_boot)

    # every checkpoint: each epoch of every training run, and every post-hoc model
    points = [(r, f) for r in runs for f in r["files"]]
    preds = [np.load(f) for _, f in points]
    dis, js = pairwise_loop(preds)
    coords = tsne_raw(preds)
    landscape_figure([r["role"] for r, _ in points], coords, out_dir / "landscape.png")

    np.savez(out_dir / "pairwise.npz", disagreement=dis, js=js)
    with open(out_dir / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {"base_accuracy": base_acc, "reference": reference, "rows": rows, "checkpoints": len(preds)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---------------------------------------------------------------- the whole pipeline


@dataclass
class Timings:
    """Seconds spent in each part, plus what the throughput figures need."""

    read: float = 0.0
    train_loop: float = 0.0  # sum of the training loops (per-item transforms and teacher forwards included)
    train_phase: float = 0.0  # wall: first epoch's start to the last training epoch's saved predictions
    compress: float = 0.0  # post-hoc compression and its evaluation
    analysis: float = 0.0
    total: float = 0.0
    images_trained: int = 0
    base_accuracy: float = 0.0
    history: list[dict] = field(default_factory=list)


def train_all(cfg: BaselineCfg, train_loader: DataLoader, test_loader: DataLoader, out_dir: Path,
              tm: Timings) -> tuple[list[dict], nn.Module]:
    """The seeds, then the students distilled from the first seed; their runs and the teacher.

    Every epoch's timings go to ``tm.history``; the throughput fields of ``tm`` are filled from them.
    """
    pred_dir = out_dir / "preds"
    runs: list[dict] = []
    models: dict[str, nn.Module] = {}
    base_init: dict | None = None

    def record(name: str, role: str, setting: str, history: list[dict]) -> None:
        runs.append({"name": name, "role": role, "setting": setting,
                     "files": [pred_dir / f"{name}_ep{h['epoch']:03d}.npy" for h in history]})
        tm.history.extend({"run": name, **h} for h in history)

    for k, seed in enumerate(cfg.seeds):
        torch.manual_seed(seed)
        model = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
        if k == 0:
            base_init = copy.deepcopy(model.state_dict())  # the students start where the base started
        name = f"seed{seed}"
        hist = train_model(model, train_loader, test_loader, cfg, pred_dir, name)
        torch.save(model.state_dict(), out_dir / f"{name}.pt")
        models[name] = model
        record(name, "base" if k == 0 else "independent", f"seed={seed}", hist)

    teacher = models[f"seed{cfg.seeds[0]}"]
    for alpha in cfg.alphas:
        for seed in cfg.student_seeds:
            torch.manual_seed(seed)
            student = create_model("lenet", in_shape=(1, 28, 28), num_classes=10)
            student.load_state_dict(base_init)
            name = f"student_a{alpha:g}_s{seed}"
            hist = train_model(student, train_loader, test_loader, cfg, pred_dir, name, teacher=teacher,
                               alpha=alpha)
            torch.save(student.state_dict(), out_dir / f"{name}.pt")
            record(name, "student", f"alpha={alpha:g}", hist)

    epochs = tm.history
    tm.train_loop = sum(h["train_seconds"] for h in epochs)
    tm.train_phase = max(h["end"] for h in epochs) - min(h["start"] for h in epochs)
    tm.images_trained = sum(h["images"] for h in epochs)
    return runs, teacher


def compress_all(cfg: BaselineCfg, teacher: nn.Module, test_loader: DataLoader, out_dir: Path) -> list[dict]:
    """The quantized and pruned copies of the teacher, evaluated and saved; their runs."""
    pred_dir = out_dir / "preds"
    runs = []
    for scheme in cfg.quantize:
        probs, _ = evaluate(quantize_model(teacher, scheme), test_loader)
        np.save(pred_dir / f"quant_{scheme}.npy", probs)
        runs.append({"name": f"quant_{scheme}", "role": "quantize", "setting": scheme,
                     "files": [pred_dir / f"quant_{scheme}.npy"]})
    for amount in cfg.prune:
        pm = prune_model(teacher, amount)
        torch.save(pm.state_dict(), out_dir / f"prune_{amount:g}.pt")
        probs, _ = evaluate(pm, test_loader)
        np.save(pred_dir / f"prune_{amount:g}.npy", probs)
        runs.append({"name": f"prune_{amount:g}", "role": "prune", "setting": f"{amount * 100:g}%",
                     "files": [pred_dir / f"prune_{amount:g}.npy"]})
    return runs


def run_pipeline(cfg: BaselineCfg, out_dir: Path) -> Timings:
    """Everything from reading MNIST to the analysis files in ``out_dir``, one step after another.

    Args:
        cfg: the work to do.
        out_dir: where predictions, checkpoints and analysis files go.

    Example:
        >>> with tempfile.TemporaryDirectory() as d:
        ...     t = run_pipeline(BaselineCfg(train_subset=256, test_subset=128, epochs=1, seeds=(0, 1),
        ...                                  student_seeds=(2,), prune=(0.5,), n_boot=10), Path(d))
        >>> t.images_trained
        768
    """
    out_dir = Path(out_dir)
    (out_dir / "preds").mkdir(parents=True, exist_ok=True)
    tm = Timings()
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    trx, try_, tex, tey = read_mnist(cfg.data_dir, cfg.train_subset, cfg.test_subset)
    tm.read = time.perf_counter() - t0
    train_loader, test_loader = make_loaders(trx, try_, tex, tey, cfg)

    runs, teacher = train_all(cfg, train_loader, test_loader, out_dir, tm)

    t0 = time.perf_counter()
    runs += compress_all(cfg, teacher, test_loader, out_dir)
    tm.compress = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary = analyse(runs, tey, out_dir, cfg.n_boot)
    tm.analysis = time.perf_counter() - t0
    tm.base_accuracy = summary["base_accuracy"]
    tm.total = time.perf_counter() - t_start
    return tm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--train-subset", type=int, default=BaselineCfg.train_subset)
    ap.add_argument("--test-subset", type=int, default=BaselineCfg.test_subset)
    ap.add_argument("--epochs", type=int, default=BaselineCfg.epochs)
    ap.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temp folder)")
    a = ap.parse_args()
    cfg = BaselineCfg(data_dir=a.data_dir, train_subset=a.train_subset, test_subset=a.test_subset,
                      epochs=a.epochs)
    with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
        tm = run_pipeline(cfg, a.out or Path(tmp))
    print(json.dumps({k: v for k, v in asdict(tm).items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
