"""Every on-disk name of a study's store, one small function each."""

from __future__ import annotations

from pathlib import Path


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def run_dir(out: Path, run_id: str) -> Path:
    return runs_dir(out) / run_id


def config_file(run: Path) -> Path:
    return run / "config.json"


def model_file(run: Path) -> Path:
    return run / "model.pt"


def packed_model_file(run: Path) -> Path:
    """Compressed weights at their real precision (quantized runs), for their true size."""
    return run / "model_packed.pt"


def init_file(run: Path) -> Path:
    """A training run's initial weights: what a base-init student starts from."""
    return run / "init.pt"


def checkpoint_file(run: Path) -> Path:
    """Model, optimizer and RNG state after the last finished epoch: what a resume reads."""
    return run / "checkpoint.pt"


def preds_dir(run: Path) -> Path:
    return run / "preds"


def preds_file(run: Path, epoch: int) -> Path:
    """Test-set softmax after ``epoch`` (1-based); post-hoc runs store epoch 0 only."""
    return preds_dir(run) / f"ep_{epoch:03d}.npy"


def labels_file(run: Path) -> Path:
    """The test set's labels ``[N]`` in dataset order, as the run saw them: what flips and per-class accuracy need."""
    return run / "labels.npy"


def metrics_file(run: Path) -> Path:
    return run / "metrics.json"


def done_file(run: Path) -> Path:
    return run / "DONE"


def study_file(out: Path) -> Path:
    """The study's config and plan: what `funclens report` needs beside the runs."""
    return Path(out) / "study.json"


def lock_file(out: Path) -> Path:
    return Path(out) / ".lock"


def summary_file(out: Path) -> Path:
    return Path(out) / "summary.json"


def report_md(out: Path) -> Path:
    return Path(out) / "report.md"


def report_html(out: Path) -> Path:
    return Path(out) / "report.html"


def tables_dir(out: Path) -> Path:
    return Path(out) / "tables"


def figures_dir(out: Path) -> Path:
    return Path(out) / "figures"


def outputs_file(out: Path) -> Path:
    """The sha256 of every report file (summary, tables, figures, report.md/html), written last."""
    return Path(out) / "outputs.json"


def accuracy_table(out: Path, ext: str) -> Path:
    """The paper's Tables 1-3 layout (accuracy deviation per setting); ``ext`` is ``"csv"`` or ``"md"``."""
    return tables_dir(out) / f"accuracy_deviation.{ext}"


def distance_table(out: Path, ext: str) -> Path:
    """Functional distance, RFD and verdict of every row; ``ext`` is ``"csv"`` or ``"md"``."""
    return tables_dir(out) / f"functional_distance.{ext}"


def landscape_table(out: Path) -> Path:
    """The landscape's 2-D coordinates of every checkpoint, so the figure can be checked and redrawn."""
    return tables_dir(out) / "landscape.csv"


def exemplars_table(out: Path) -> Path:
    """Compression-identified exemplars: test inputs whose modal label a setting's compressed models changed."""
    return tables_dir(out) / "exemplars.csv"


def attribution_table(out: Path) -> Path:
    """``funclens attribute``'s per-layer flips, disagreement and KL, the most harmful layer first."""
    return Path(out) / "attribution.csv"


def attribution_figure(out: Path) -> Path:
    return Path(out) / "attribution.png"


def landscape_figure(out: Path) -> Path:
    return figures_dir(out) / "landscape.png"


def landscape_interactive(out: Path) -> Path:
    return figures_dir(out) / "landscape.html"


def accuracy_figure(out: Path) -> Path:
    """Accuracy deviation against RFD."""
    return figures_dir(out) / "accuracy_vs_distance.png"


def distances_figure(out: Path) -> Path:
    """The matrix of distances among all final models."""
    return figures_dir(out) / "distances.png"


def study_names() -> frozenset[str]:
    """The names a study (or a sweep's combined report) may write at the top of its output folder: no
    sweep entry's folder may take one of them.

    Example:
        >>> sorted(study_names())[:4]
        ['.lock', 'attribution.csv', 'attribution.png', 'figures']
    """
    return frozenset(f(Path()).parts[0] for f in (runs_dir, study_file, lock_file, summary_file, report_md,
                                                   report_html, tables_dir, figures_dir, outputs_file,
                                                   attribution_table, attribution_figure))
