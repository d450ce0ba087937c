"""The model card (reports/model_card.md): what the model is, what data it saw, how well it does
with confidence intervals, where its operating point sits, and what the numbers cannot tell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chestxray.judge.metrics import METRICS
from chestxray.serve import provenance
from chestxray.tasks import COVID

INTENDED_USE = (
    "Research on reproducible chest X-ray classifiers and comparison of backbones. It is not a medical "
    "device: do not use it to diagnose, triage or exclude COVID-19 in a patient."
)
PAEDIATRIC = (
    "**Age confound (COVID-19 Radiography Database).** Its Viral Pneumonia images and part of its Normal "
    "images come from a paediatric pneumonia collection (children aged 1–5), while its COVID images are of "
    "adults. A model can tell these classes apart by the size and shape of a child's chest instead of by "
    "the disease, so Viral Pneumonia and Normal-vs-COVID scores here are likely higher than on patients of "
    "one age group: read them as an upper bound, not as what the model would do on adults with viral "
    "pneumonia or on children with COVID-19. (The embedded synthetic data reproduces this cue: its viral "
    "pneumonia chests are smaller, which is why zoom augmentation is off by default.)"
)
SOURCES = (
    "**Source confound.** Each class of the public datasets comes mostly from different hospitals and "
    "collections (scanners, text markers, cropping, compression), so part of what is learned may be the "
    "source rather than the pathology. The test split comes from the same sources as the training split: "
    "these numbers are internal validation, not external validation on another hospital's images."
)
SYNTHETIC = (
    "**Synthetic data.** These numbers are on the embedded synthetic dataset, generated to exercise the "
    "pipeline offline: they say nothing about real chest X-rays."
)
REAL_DATA = "dvc exp run -S data.source=kaggle -S data.image_size=224 -S train.weights=imagenet -S model=mobilenetv2"


def render(
    run: Mapping[str, Any],
    metrics: Mapping[str, Any],
    train: Mapping[str, Any],
    split: Mapping[str, Any],
    download: Mapping[str, Any],
    resamples: int,
    audit: Mapping[str, Any],
) -> str:
    """The card as Markdown, from run.json, evaluate.json, train.json, split.json, download.json and
    the audit (audit.json's content). It opens with the data the model was trained on (and, for
    synthetic data, its warning), then leads with the served rule (the operating point); the metric
    tables are the argmax rule's, on validation (what compare chooses by) and on test (reported once);
    the shortcut audit puts its numbers beside them."""
    val = metrics["validation"]
    lines = [
        f"# Model card: {run['model']}",
        "",
        *data_lines(download, split["data_version"]),
        f"Written by the audit stage for MLflow run `{run['run_id']}` (model `runs:/{run['run_id']}/model`).",
        "",
        *(_audit_run_banner(run["occlude"]) if run["occlude"] else []),
        "## Model",
        (
            f"- Backbone `{run['model']}`, {'ImageNet' if run['weights'] == 'imagenet' else 'random'} initial weights,"
            f" input {run['image_size']}×{run['image_size']} grey, {train['params']:,} parameters."
        ),
        (
            f"- Best checkpoint: epoch {train['best_epoch']} of 0..{train['epochs_run'] - 1}"
            f" (validation loss {train['best_val_loss']:.4f}, accuracy {train['best_val_accuracy']:.4f});"
            f" class imbalance handled by `{run['imbalance']}`."
        ),
        f"- Classes: {', '.join(run['classes'])}.",
        f"- Intended use: {INTENDED_USE}",
        "",
        "## Data",
        f"- Source: {_source(download)}.",
        f"- Data version (hash of the split table, with every image's sha256): `{split['data_version']}`.",
        (
            f"- Split: stratified by class, {_grouping(split['grouping'])}; {split['groups']:,} groups; across splits"
            f" {split['leakage']['exact_pairs']} exact and {split['leakage']['near_pairs']} near-duplicate pairs."
        ),
        "",
        *_counts_table(split["counts"], run["classes"]),
        "",
        "## The served rule",
        "",
        *_operating_point(metrics["operating_point"]),
        "",
        f"## Metrics of the argmax rule (validation n = {val['n']}, test n = {metrics['n']})",
        "",
        (
            "The most probable class, without the threshold above. The validation column is what the compare stage"
            " ranks and promotes by; the test column is reported once and decides nothing. 95 % confidence"
            f" intervals: percentile bootstrap over the split's {_unit(split['grouping'])} ({metrics['groups']:,} in"
            f" test), {resamples:,} seeded resamples; an interval is *collapsed* when every resample gave the same"
            " value (too few images to bound it)."
        ),
        "",
        "| metric | validation | test | test 95 % CI |",
        "|---|---|---|---|",
        *(
            f"| {m.title} | {_fmt(val[m.name])} | {_fmt(metrics[m.name])} | {_ci(metrics['ci'].get(m.name))} |"
            for m in METRICS
        ),
        "",
        "Per class on test (argmax rule):",
        "",
        "| class | precision | sensitivity | specificity | F1 | ROC-AUC | PR-AUC | support |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | "
            + " | ".join(_fmt(m[key]) for key in ("precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"))
            + f" | {m['support']} |"
            for name, m in metrics["per_class"].items()
        ),
        "",
        *shortcut_audit(audit, len(run["classes"])),
        "## Known limitations",
        "",
        *(f"- {text}" for text in _limitations(download)),
        _small_test_split(metrics),
        "",
        "## Plots",
        "",
        (
            "Confusion matrix (`evaluate/confusion.png`), ROC (`evaluate/roc.png`), precision-recall"
            " (`evaluate/pr.png`),"
            " reliability diagram (`evaluate/reliability.png`), training curves (`train/curves.png`), Grad-CAM gallery"
            " (`gradcam/index.md`)."
        ),
        "",
    ]
    return "\n".join(lines)


def data_lines(download: Mapping[str, Any], data_version: str) -> list[str]:
    """The card's first lines: the data the model was trained on (``serve.provenance``), after the
    warning and how to train on real data when that data is synthetic."""
    data = provenance.training_data(download.get("source"), download.get("slug") or download.get("name"), data_version)
    lines = [f"Trained on: **{provenance.trained_on(data)}**.", ""]
    if warning := provenance.warning(data):
        banner = (
            f"> **WARNING: {warning}.** This model was trained on the embedded synthetic dataset, generated to"
            " exercise the pipeline offline: its answers on real chest X-rays, and every number on this card,"
            f" mean nothing. To train on real data: `{REAL_DATA}`."
        )
        lines = [banner, "", *lines]
    return lines


def _operating_point(op: Mapping[str, Any]) -> list[str]:
    """The served rule: its threshold, how validation chose it, and its test sensitivity and
    specificity with exact intervals, first."""
    ci = op["ci"]
    rule = (
        f"the highest threshold at which the one-sided 95 % exact lower bound of validation sensitivity reaches"
        f" {op['target_sensitivity']}"
        if op["rule"] == "lower_bound"
        else f"the highest threshold at which validation sensitivity reaches {op['target_sensitivity']}"
    )
    chosen = (
        f"Validation ({op['val_positives']} {COVID} images): sensitivity {_fmt(op['val_sensitivity'])} (lower bound"
        f" {_fmt(op['val_sensitivity_lower_bound'])}), specificity {_fmt(op['val_specificity'])}."
    )
    if not op["target_met"]:
        chosen += (
            f" **The target was not met with confidence**: validation has too few {COVID} images to certify"
            f" {op['target_sensitivity']}, so the threshold is the one with the highest lower bound (it finds every"
            f" validation {COVID} image)."
        )
    return [
        (
            f"A case is called {COVID} when p({COVID}) ≥ **{_fmt(op['threshold'])}**, else the most probable other"
            " class. This is the rule `python -m chestxray predict`, the served model and the web page apply."
        ),
        "",
        (
            f"On the test split ({COVID} against the rest, {op['positives']} {COVID} and {op['negatives']} other"
            f" images): **sensitivity {_fmt(op['sensitivity'])}** {_span(ci['sensitivity'])} and **specificity"
            f" {_fmt(op['specificity'])}** {_span(ci['specificity'])} (95 % exact Clopper-Pearson intervals)."
        ),
        "",
        f"The threshold is {rule} (`evaluate.threshold_rule: {op['rule']}`). {chosen}",
    ]


def _grouping(grouping: Mapping[str, Any]) -> str:
    """How the split kept related images together, as measured on the source."""
    if grouping["by"] == "patient":
        without = grouping["images_without_patient_id"]
        return "grouped by patient" + (
            f" ({without:,} images without a patient id are grouped by duplicate group only)" if without else ""
        )
    if grouping["by"] == "duplicate group":
        return (
            "grouped by duplicate group only (image-level: the source has no patient ids, so images of one patient"
            " may sit in different splits; copies and near-copies of an image are kept together)"
        )
    return "image-level (the source has no patient ids and no duplicates: every image is its own group)"


def _unit(grouping: Mapping[str, Any]) -> str:
    """What the bootstrap resamples."""
    if grouping["by"] == "patient":
        return "groups (patients; images without a patient id by duplicate group)"
    return "groups (duplicate groups, else single images)" if grouping["by"] == "duplicate group" else "images"


def _small_test_split(metrics: Mapping[str, Any]) -> str:
    """How little the test split can tell: the served rule's exact sensitivity interval."""
    op = metrics["operating_point"]
    return (
        f"- **Small test split.** It holds {op['positives']} {COVID} images, so the served rule's test sensitivity"
        f" is known only to within {_span(op['ci']['sensitivity'])} (95 %, exact). Differences between models inside"
        " their intervals are noise."
    )


def _source(download: Mapping[str, Any]) -> str:
    if download.get("source") == "kaggle":
        return f"Kaggle `{download.get('slug')}` version {download.get('version', '?')}"
    if download.get("source") == "synthetic":
        return "the embedded synthetic dataset (laid out like the Kaggle COVID-19 Radiography Database)"
    return f"a local dataset ({download.get('source', 'unknown')})"


def _limitations(download: Mapping[str, Any]) -> list[str]:
    return [SYNTHETIC, PAEDIATRIC, SOURCES] if download.get("source") == "synthetic" else [PAEDIATRIC, SOURCES]


def _counts_table(counts: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> list[str]:
    splits = ("train", "val", "test")
    rows = ["| class | train | val | test |", "|---|---|---|---|"]
    rows += [f"| {c} | " + " | ".join(str(counts[s].get(c, 0)) for s in splits) + " |" for c in classes]
    return [*rows, "| total | " + " | ".join(str(sum(counts[s].values())) for s in splits) + " |"]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ci(ci: Mapping[str, Any] | None) -> str:
    """A bootstrap interval's cell: the span, 'collapsed', or empty for a metric without one."""
    if ci is None:
        return ""
    return "collapsed" if ci["collapsed"] else _span(ci)


def _span(ci: Mapping[str, float | None]) -> str:
    return f"[{_fmt(ci['low'])}, {_fmt(ci['high'])}]"


BORDER_ONLY_START, BORDER_ONLY_END = "<!-- border-only -->", "<!-- /border-only -->"  # compare rewrites it


def _audit_run_banner(occlude: float) -> list[str]:
    return [
        (
            f"**This is an audit run.** It was trained and tested with the central {occlude:.0%} × {occlude:.0%} of"
            " every image (most of both lung fields) blacked out (`data.occlude`), to measure how much of the task"
            " can be done without the lungs. It is ranked on the leaderboard but never becomes champion."
        ),
        "",
    ]


def _reading(value: float | None, headline: float, chance: float) -> float | None:
    """How much of the headline's lead over chance ``value`` keeps (1: all of it, 0: none)."""
    if value is None or headline <= chance:
        return None
    return (value - chance) / (headline - chance)


def border_only_block(border_only: Mapping[str, Any] | None, headline: float, k: int) -> list[str]:
    """The paragraph on the best border-only audit run of the data version, between markers so that
    compare can rewrite it on the champion's card when a better one is run later."""
    chance = 1 / k
    if border_only is None:
        text = (
            "No border-only audit run on this data version yet. To measure how much of the score is available"
            " without the lungs, train the same recipe with the centre of every image blacked out:"
            " `dvc exp run -S data.occlude=0.6`."
        )
    else:
        b = border_only["test"]
        kept = _reading(b, headline, chance)
        text = (
            f"**A model that never saw the centre of the images** (audit run `{border_only['run_name']}`,"
            f" `{border_only['model']}`, central {border_only['occlude']:.0%} × {border_only['occlude']:.0%} blacked"
            f" out in training and test, chosen on validation) scores test macro-F1 **{_fmt(b)}**, against"
            f" {_fmt(headline)} for this model; guessing scores about {chance:.2f}. "
        )
        if kept is None:
            text += "This model does not beat guessing, so the comparison says nothing."
        elif kept >= 0.8:
            text += (
                "Nearly all of what this model scores can be had without looking at the lungs: the images carry"
                " their class outside the lungs (the patient's age and body size, the hospital, the scanner, text"
                " markers). Read the headline as the ability to tell the datasets' sources apart, not as the ability"
                " to see COVID-19 in the lungs."
            )
        elif kept >= 0.4:
            text += (
                "Much of what this model scores can be had without looking at the lungs: part of the headline comes"
                " from cues outside them (age, hospital, scanner, markers), not from the disease."
            )
        else:
            text += "Without the lungs a model does much worse: most of the signal lies in the lungs."
    return [BORDER_ONLY_START, text, BORDER_ONLY_END]


def shortcut_audit(result: Mapping[str, Any], k: int) -> list[str]:
    """The "Shortcut audit" section: the audit's numbers beside the headline, in plain words."""
    a = result["audit"]
    headline, chance, side = a["headline"]["macro_f1"], 1 / k, f"{a['occlude']:.0%} × {a['occlude']:.0%}"
    occluded = a["occluded"]["macro_f1"]
    kept = _reading(occluded, headline, chance)
    lines = [
        "## Shortcut audit",
        "",
        (
            "Public COVID-19 X-ray collections put each class together from different hospitals, scanners and age"
            " groups, and models trained on them are known to learn the source instead of the disease. These"
            " checks measure how much of this model's score depends on the lungs. They are on the test split;"
            " a hidden part is filled with the image's own mean grey, so that it is not a black box the model"
            " never saw."
        ),
        "",
        "| what the model was shown | macro-F1 (test) | accuracy (test) |",
        "|---|---|---|",
        f"| the whole image (the headline above) | {_fmt(headline)} | {_fmt(a['headline']['accuracy'])} |",
        f"| the image with its central {side} hidden (grey) | {_fmt(occluded)} | {_fmt(a['occluded']['accuracy'])} |",
        (
            f"| only the central {side} (the rest hidden, grey) | {_fmt(a['lungs_only']['macro_f1'])} |"
            f" {_fmt(a['lungs_only']['accuracy'])} |"
        ),
        f"| guessing | about {chance:.2f} | |",
        "",
    ]
    if kept is not None:
        lines += [
            (
                f"Hiding the centre of the test images {'barely changes' if kept >= 0.8 else 'lowers'} this"
                f" model's macro-F1 ({_fmt(headline)} → {_fmt(occluded)}): "
                + (
                    "it decides largely without the lungs."
                    if kept >= 0.8
                    else "it relies on what lies in the centre. (A grey box is also unlike anything it was trained"
                    " on, so part of the drop may come from that; the border-only run below has no such excuse.)"
                )
            ),
            "",
        ]
    lines += [*border_only_block(result["border_only"], headline, k), "", *_where_it_looks(a["gradcam_in_lungs"])]
    lines += [*_per_source(result["per_source"]), *_external(result["external"], headline), *_leakage(result)]
    return lines


def _where_it_looks(cam: Mapping[str, Any] | None) -> list[str]:
    if cam is None:
        return ["**Where the model looks**: this dataset ships no lung masks, so it was not measured.", ""]
    per_class = ", ".join(
        f"{c} {_fmt(v)}" for c, v in cam.items() if c not in ("overall", "n", "lung_area", "empty") and v is not None
    )
    looks = "less than" if cam["overall"] < cam["lung_area"] else "more than"
    empty = f" ({cam['empty']} image(s) with an all-zero map are left out)" if cam["empty"] else ""
    return [
        (
            f"**Where the model looks**: of the model's Grad-CAM mass (what drove its answer) over {cam['n']:,} test"
            f" images with a lung mask{empty}, **{cam['overall']:.0%}** falls inside the lung fields, which cover"
            f" {cam['lung_area']:.0%} of the image: {looks} a model looking everywhere evenly would put there."
            f" By true class: {per_class}. A class whose share is low is told apart mostly by what lies outside"
            " the lungs."
        ),
        "",
    ]


def _per_source(by_source: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not by_source:
        return [
            "**Per source**: the dataset records no image source, or no source has enough test images"
            " (`audit.min_source_images`).",
            "",
        ]
    rows = [
        f"| {name} | {s['n']} | {_fmt(s['accuracy'])} | {_fmt(s['macro_f1'])} | "
        + ", ".join(f"{c} {n}" for c, n in s["classes"].items())
        + " |"
        for name, s in by_source.items()
    ]
    return [
        (
            "**Per source** (where the images came from, as the dataset records it). A source whose test images"
            " are all of one class has no macro-F1 (–): in it, the class and the source cannot be told apart."
        ),
        "",
        "| source | test images | accuracy | macro-F1 | classes |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _external(external: Mapping[str, Mapping[str, Any]], headline: float) -> list[str]:
    if not external:
        return [
            (
                "**External validation**: none (`evaluate.external` is empty). Every number on this card comes from"
                " the same sources as the training images: it is internal validation only."
            ),
            "",
        ]
    rows = [
        f"| {name} | {e['task']} | {e['n']} | {_fmt(e['macro_f1'])} {_ci(e['ci'].get('macro_f1'))} |"
        f" {_fmt(e['accuracy'])} | {_fmt(e['covid_sensitivity'])} | {_fmt(e['covid_specificity'])} |"
        f" {e['in_training']} |"
        for name, e in external.items()
    ]
    return [
        (
            "**External validation**: datasets from other sources, never trained on, scored with the model's"
            f" classes mapped onto theirs. Compare their macro-F1 with the internal {_fmt(headline)}: a large drop"
            " means the internal score does not carry over to other hospitals."
        ),
        "",
        "| dataset | task | images | macro-F1 [95 % CI] | accuracy | COVID sensitivity | COVID specificity |"
        " left out (in training) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _leakage(result: Mapping[str, Any]) -> list[str]:
    leak = result["leakage"]
    near = leak["nearest_train_distance"]
    pairs = sum(leak["cross_split_pairs"].values())
    return [
        (
            f"**Near copies across splits**: each test image's nearest training image is at least {near['min']} bits"
            f" apart (median {near['median']:g}) of 256 perceptual-hash bits. {pairs} pair(s) of images in different"
            f" splits are within {leak['audit_distance']} bits (the split keeps images within"
            f" {leak['split_distance']} bits together, so its own check finds none by construction). On 111 real"
            " X-rays, distinct images were at least 68 bits apart, resized or re-encoded copies at most 6 and"
            " contrast or gamma edits of ±20 % at most 20 (`benchmarks/hash_distances.py`): a pair within"
            f" {leak['audit_distance']} bits is worth a look in `audit/nearest_train.csv`. See"
            " `audit/nearest_train.png`."
        ),
        "",
    ]


def replace_block(card: str, block: list[str]) -> str | None:
    """``card`` with its border-only paragraph replaced by ``block``; None if it has none."""
    start, end = card.find(BORDER_ONLY_START), card.find(BORDER_ONLY_END)
    if start < 0 or end < start:
        return None
    return card[:start] + "\n".join(block) + card[end + len(BORDER_ONLY_END) :]
