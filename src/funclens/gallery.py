"""The report's exemplars and gallery: ``tables/exemplars.csv`` for every post-hoc setting, and for image data a
section of report.html showing the top exemplars and the most-flipped test inputs, each with its image, true
label, and the base's and a compressed model's labels and probabilities.

Images come from the data set files the study used, loaded offline through :mod:`funclens.data` with the study's
own DataCfg (its content pin makes them the very images the runs saw); nothing is downloaded and no model is
built. Where the files are not there, the section says so and the rest of the report stands.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funclens import paths
from funclens.errors import FunclensError
from funclens.exemplars import COLUMNS, Exemplar, exemplar_rows, exemplars
from funclens.store import atomic_write_text
from funclens.summary import COMPARED_ROLES, POSTHOC_ROLES, RunView, StudyView, population

SHOWN_PER_SETTING = 6   # exemplars shown per setting in the gallery (the CSV holds them all)
SHOWN_FLIPPED = 12      # most-flipped inputs shown
_PIXELS = 84            # shown width of an image, CSS pixels: MNIST's 28 at 3x


@dataclass(frozen=True)
class SettingExemplars:
    role: str
    setting: str
    population: int
    found: list[Exemplar]


def setting_exemplars(sv: StudyView, labels: np.ndarray | None) -> list[SettingExemplars]:
    """The exemplars of every post-hoc setting of ``sv`` (quantize, prune, fine-tuned, custom...), in the plan's order.

    Args:
        sv: the study.
        labels: the test set's true labels, when known.
    """
    uncompressed = [sv.base.final, *(r.final for r in sv.of("independent"))]
    out = []
    for role in POSTHOC_ROLES:
        for setting in dict.fromkeys(r.setting for r in sv.of(role)):
            members = [m.final for _, m in population(sv, role, setting)]
            out.append(SettingExemplars(role, setting, len(members), exemplars(uncompressed, members, labels)))
    return out


def write_exemplars(out: Path, found: list[SettingExemplars]) -> Path:
    """``tables/exemplars.csv``: one row per exemplar of every setting, ranked within each setting."""
    rows = [list(COLUMNS)] + [r for s in found for r in exemplar_rows(s.setting, s.found, s.population)]
    f = paths.exemplars_table(out)
    f.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f, "\n".join(",".join(r) for r in rows) + "\n")
    return f


def _png(img: np.ndarray) -> bytes:
    """PNG of one uint8 image ``[C, H, W]`` (C 1 or 3), enlarged by whole pixels to about ``_PIXELS`` wide."""
    from PIL import Image

    arr = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    pic = Image.fromarray(np.ascontiguousarray(arr))
    k = max(1, _PIXELS // pic.width)
    buf = io.BytesIO()
    pic.resize((pic.width * k, pic.height * k), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def _card(img: np.ndarray, lines: list[str]) -> str:
    src = base64.b64encode(_png(img)).decode()
    text = "<br>".join(html.escape(s) for s in lines)
    return (f'<figure class="gallery-item" style="display:inline-block;margin:.4em;text-align:center;'
            f'font-size:.8em"><img class="gallery-img" alt="test input" width="{_PIXELS}" '
            f'style="image-rendering:pixelated" src="data:image/png;base64,{src}"><figcaption>{text}'
            f'</figcaption></figure>')


def _label(probs: np.ndarray, i: int) -> str:
    c = int(probs[i].argmax())
    return f"{c} ({float(probs[i, c]):.2f})"


def _compared(sv: StudyView) -> dict[str, RunView]:
    """The models compared with the base, by the name the gallery gives them (independents' copies left out)."""
    return {(r.setting if r.role in POSTHOC_ROLES else f"{r.setting} s{r.seed}"): r
            for role in COMPARED_ROLES for r in sv.of(role)
            if r.parent in (None, sv.base.run)}


def most_flipped(sv: StudyView) -> list[tuple[int, int, str]]:
    """The test inputs the most compared models (students and the base's compressed models) label otherwise
    than the base: ``(index, models that flip it, name of the model least sure of the base's label)``,
    most flips first, then by index.

    Args:
        sv: the study.
    """
    top = sv.base.final.argmax(axis=1)
    models = [(name, r.final) for name, r in _compared(sv).items()]
    if not models:
        return []
    flips = np.sum([m.argmax(axis=1) != top for _, m in models], axis=0)
    own = np.stack([m[np.arange(len(top)), top].astype(np.float32) for _, m in models])  # [models, N]
    idx = np.flatnonzero(flips)
    idx = idx[np.lexsort((idx, -flips[idx]))][:SHOWN_FLIPPED]
    return [(int(i), int(flips[i]), models[int(own[:, i].argmin())][0]) for i in idx]


def _gallery_html(sv: StudyView, found: list[SettingExemplars], images: np.ndarray, labels: np.ndarray) -> str:
    base = sv.base.final
    parts = []
    for s in found:
        own = population(sv, s.role, s.setting)[0][1]  # the base's compressed model
        cards = [_card(images[e.index], [f"#{e.index} true {labels[e.index]}", f"base {_label(base, e.index)}",
                                         f"{s.setting} {_label(own.final, e.index)}",
                                         f"modes {e.modal_uncompressed} -> {e.modal_compressed}, share {e.share:.2f}"])
                 for e in s.found[:SHOWN_PER_SETTING]]
        parts.append(f"<h3>{html.escape(s.setting)}: {len(s.found)} exemplars</h3>"
                     + ("".join(cards) if cards else "<p>none</p>"))
    parts.append("<h3>Most-flipped test inputs</h3><p>Inputs the most compared models label otherwise than the base; "
                 "each shows the model least sure of the base's label.</p>")
    cards = []
    named = _compared(sv)
    for i, n, name in most_flipped(sv):
        cards.append(_card(images[i], [f"#{i} true {labels[i]}", f"base {_label(base, i)}",
                                       f"{name} {_label(named[name].final, i)}", f"flipped by {n} of {len(named)}"]))
    parts.append("".join(cards) if cards else "<p>no compared model changes any test input's label</p>")
    return "".join(parts)


def _load_images(sv: StudyView) -> tuple[np.ndarray, np.ndarray] | str:
    """(test images, labels) of the study's data, offline; or why they could not be had."""
    from funclens.data import load_from_cfg

    try:
        data = load_from_cfg(sv.study.data, None, offline=True)
    except FunclensError as e:
        return str(e)
    if len(data.test_y) != sv.base.final.shape[0]:
        return f"the data set holds {len(data.test_y)} test images, the runs {sv.base.final.shape[0]}"
    return data.test_x.numpy(), data.test_y.numpy()


def add_gallery(out: Path, sv: StudyView) -> Path:
    """Write ``tables/exemplars.csv`` and add the exemplars section to the study's report.md and report.html
    (both already written), before the end of each. Returns the CSV's path.

    Args:
        out: the study's folder.
        sv: the study, as the report read it.
    """
    loaded = _load_images(sv)
    labels = None if isinstance(loaded, str) else loaded[1]
    found = setting_exemplars(sv, labels)
    csv = write_exemplars(out, found)
    one = not sv.study.compress_all_seeds
    note = ("Test inputs where the modal label of a setting's compressed models differs from that of the "
            "uncompressed models (Hooker et al. 2019), in tables/exemplars.csv. "
            + ("Each setting compressed the base alone (compress_all_seeds is off): a population of one, so an "
               "exemplar may be that one model's noise rather than what the setting does." if one else
               f"Each setting compressed all {len(sv.study.seeds)} uncompressed models."))
    md = ["", "## Compression-identified exemplars", "", note, ""]
    for s in found:
        first = ", ".join(str(e.index) for e in s.found[:SHOWN_PER_SETTING])
        md.append(f"- {s.setting}: {len(s.found)} exemplars" + (f" (first: test inputs {first})" if first else ""))
    section = f"<h2>Compression-identified exemplars</h2><p>{html.escape(note)}</p>"
    if isinstance(loaded, str):
        section += f"<p>No gallery: the test images could not be read offline ({html.escape(loaded)}).</p>"
    else:
        section += _gallery_html(sv, found, loaded[0], loaded[1])
    report_md, report_html = paths.report_md(out), paths.report_html(out)
    atomic_write_text(report_md, report_md.read_text() + "\n".join(md) + "\n")
    page = report_html.read_text()
    cut = page.rindex("</body>")
    atomic_write_text(report_html, page[:cut] + section + page[cut:])
    return csv
