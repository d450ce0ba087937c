"""The model card (reports/model_card.md): what the model is, what data it saw, how well it does
with confidence intervals, where its operating point sits, and what the numbers cannot tell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scipy.stats import binomtest

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
    """The card as Markdown, from run.json, evaluate.json, train.json, split.json, download.json."""
    op = metrics["operating_point"]
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
        f"- Data version (hash of the split table): `{split['data_version']}`.",
        (
            f"- Split: stratified by class and grouped by patient (else by duplicate group),"
            f" {split['groups']:,} groups; across splits {split['leakage']['exact_pairs']} exact and"
            f" {split['leakage']['near_pairs']} near-duplicate pairs."
        ),
        "",
        *_counts_table(split["counts"], run["classes"]),
        "",
        f"## Test metrics (n = {metrics['n']}, test split only)",
        "",
        f"95 % confidence intervals: percentile bootstrap over the test images, {resamples:,} seeded resamples.",
        "",
        "| metric | value | 95 % CI |",
        "|---|---|---|",
        *(_metric_row(m.title, metrics[m.name], metrics["ci"].get(m.name)) for m in METRICS),
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
        "## Operating point",
        "",
        (
            f"A case is called {COVID} when p({COVID}) ≥ **{_fmt(op['threshold'])}**; the threshold is the highest"
            " that reaches"
            f" sensitivity ≥ {op['target_sensitivity']} on the validation split (validation: sensitivity"
            f" {_fmt(op['val_sensitivity'])}, specificity {_fmt(op['val_specificity'])}). On the test split it gives"
            f" **sensitivity {_fmt(op['sensitivity'])}** and **specificity {_fmt(op['specificity'])}**"
            f" ({COVID} against the rest). Below the threshold the most probable other class is predicted. This is"
            " the rule `python -m chestxray predict`,"
            " the served model and the web page apply."
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


def _small_test_split(metrics: Mapping[str, Any]) -> str:
    """How wide the COVID sensitivity really is: the exact binomial (Clopper-Pearson) interval
    next to the bootstrap one, which cannot leave 0 or 1 once every resample agrees."""
    covid = metrics["per_class"][COVID]
    found, positives = round(covid["recall"] * covid["support"]), covid["support"]
    exact = binomtest(found, positives).proportion_ci(confidence_level=0.95, method="exact")
    return (
        f"- **Small test split.** {found} of {positives} {COVID} test images found: the bootstrap interval for the"
        f" sensitivity is {_span(metrics['ci']['covid_sensitivity'])}, the exact binomial (Clopper-Pearson) one"
        f" [{exact.low:.3f}, {exact.high:.3f}]. Differences between models inside these intervals are noise"
        " (the compare stage tests the top two with McNemar's test)."
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


def _metric_row(name: str, value: float | None, ci: Mapping[str, float | None] | None = None) -> str:
    return f"| {name} | {_fmt(value)} | {_span(ci) if ci else ''} |"


def _span(ci: Mapping[str, float | None]) -> str:
    return f"[{_fmt(ci['low'])}, {_fmt(ci['high'])}]"
