"""The model card (reports/model_card.md): what the model is, what data it saw, how well it does
with confidence intervals, where its operating point sits, and what the numbers cannot tell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chestxray.judge.metrics import METRICS
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


def render(
    run: Mapping[str, Any],
    metrics: Mapping[str, Any],
    train: Mapping[str, Any],
    split: Mapping[str, Any],
    download: Mapping[str, Any],
    resamples: int,
) -> str:
    """The card as Markdown, from run.json, evaluate.json, train.json, split.json, download.json. It
    leads with the served rule (the operating point); the metric tables are the argmax rule's, on
    validation (what compare chooses by) and on test (reported once)."""
    val = metrics["validation"]
    lines = [
        f"# Model card: {run['model']}",
        "",
        f"Written by the evaluate stage for MLflow run `{run['run_id']}` (model `runs:/{run['run_id']}/model`).",
        "",
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
