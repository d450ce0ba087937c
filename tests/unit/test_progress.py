"""Progress in a log: a line at most every LOG_INTERVAL seconds with done/total and an ETA that leaves
out the warm-up; tqdm's bar on a terminal; fit's batches, predict's and Grad-CAM's images counted."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
import pytest
from tqdm import tqdm

from chestxray import progress as progress_module
from chestxray.progress import LogProgress, progress, track


class Clock:
    """A clock the test moves by hand (no test here waits or times anything)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def info(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the progress lines (INFO)."""
    caplog.set_level(logging.INFO, logger="chestxray.progress")


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The progress lines logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == "chestxray.progress"]


@pytest.fixture
def log_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines, not bars, even under `pytest -s` on a terminal; a line at every update."""
    monkeypatch.setattr(progress_module, "interactive", lambda: False)
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)


def eta_seconds(line: str) -> int:
    """The ETA of a line (tqdm's m:ss or h:mm:ss) in seconds."""
    parts = [int(p) for p in re.search(r"ETA ([\d:]+)$", line).group(1).split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def test_a_line_every_interval_with_an_eta_that_leaves_out_the_warm_up(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    with LogProgress(1000, "inspect", clock=clock) as bar:
        clock.now = 100.0  # the first image takes 100 s (starting the worker processes) ...
        bar.update()
        for _ in range(999):  # ... then one a second
            clock.now += 1.0
            bar.update()
    lines = logged(caplog)
    assert lines[0] == "inspect: 1/1000 img (0 %)"  # no rate yet, so no ETA
    # 969 left at one a second; from the first 130 s (31 images) it would read 1:07:38
    assert lines[1] == "inspect: 31/1000 img (3 %), 1.0 img/s, ETA 16:09"
    assert eta_seconds(lines[1]) == 969
    counts = [int(re.match(r"inspect: (\d+)/", line).group(1)) for line in lines[:-1]]
    assert counts == [1, *range(31, 1000, 30)]  # at t = 100 s, then every 30 s
    assert all(eta_seconds(line) == 1000 - n for line, n in zip(lines[1:-1], counts[1:], strict=True))
    assert lines[-1] == "inspect: 1000 img in 18:19, 1.1 s/img"  # the last line: all of it, warm-up included


def test_the_rate_is_smoothed_over_intervals(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    bar = LogProgress(None, "cache train", clock=clock)
    for step in range(1, 61):  # one image a second for 30 s, then two a second
        clock.now = float(step)
        bar.update(1 if step <= 30 else 2)
    lines = logged(caplog)
    rates = [float(m.group(1)) for line in lines if (m := re.search(r"([\d.]+) img/s", line))]
    assert rates == [1.0, pytest.approx(0.3 * 2 + 0.7 * 1, abs=0.05)]  # tqdm's smoothing, 0.3
    assert "ETA" not in lines[-1] and "/? img" in lines[-1]  # an unknown total: counts and rate only


def test_short_work_writes_nothing(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    with LogProgress(100, "Grad-CAM gallery", clock=clock) as bar:
        for _ in range(100):
            clock.now += 0.2  # 20 s in all: less than LOG_INTERVAL
            bar.update()
    assert logged(caplog) == []


def test_the_next_step_keeps_the_rhythm_of_the_one_before(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    with LogProgress(100, "epoch 1/2", "batch", leave=False, clock=clock) as train:
        for t in (10.0, 20.0, 30.0, 40.0, 50.0):
            clock.now = t
            train.update()
    with LogProgress(10, "epoch 1/2 validation", "batch", leave=False, clock=clock) as validation:
        for t in (55.0, 60.0, 65.0):
            clock.now = t
            validation.update()
    # at 30 s, then at 60 s: 30 s after the training's line, not 30 s after the validation began
    assert logged(caplog) == [
        "epoch 1/2: 3/100 batch (3 %), 10.0 s/batch, ETA 16:10",
        "epoch 1/2 validation: 2/10 batch (20 %), 5.0 s/batch, ETA 00:40",
    ]


def test_a_terminal_gets_tqdm_bar_and_a_log_gets_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)  # what a terminal is, for progress() and for tqdm
    with progress(3, "inspect") as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    assert "inspect: 100%" in terminal.getvalue() and "3/3" in terminal.getvalue()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a file
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)
    assert list(track(iter("abc"), 3, "inspect")) == ["a", "b", "c"]
    assert [line.split(",")[0] for line in logged(caplog)] == [
        "inspect: 1/3 img (33 %)",
        "inspect: 2/3 img (67 %)",
        "inspect: 3/3 img (100 %)",
        "inspect: 3 img in 00:00",
    ]


@pytest.fixture(scope="module")
def tiny_model():
    """A small CNN at 32 px (random weights) for the Keras tests below."""
    import keras

    from chestxray.config import HeadSettings
    from chestxray.learn.models import build_model

    keras.utils.set_random_seed(0)
    model, _ = build_model("cnn", 32, 4, "none", {"filters": [4]}, HeadSettings(dense=[], dropout=0.0))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_fit_logs_each_batch_of_training_and_validation(
    cache_dir, tiny_model, log_mode, caplog: pytest.LogCaptureFixture
):
    from chestxray.data.cache import load_split
    from chestxray.learn.callbacks import LogBatches
    from chestxray.learn.inputs import make_dataset

    train = make_dataset(*load_split(cache_dir, "train"), 32, True, 0)
    val = make_dataset(*load_split(cache_dir, "val"), 32, False, 0)
    steps, val_steps = int(train.cardinality()), int(val.cardinality())
    assert steps >= 3 and val_steps >= 1
    tiny_model.fit(train, validation_data=val, epochs=2, verbose=0, callbacks=[LogBatches(val_steps)])
    lines = logged(caplog)
    for epoch in (1, 2):
        batches = [line for line in lines if line.startswith(f"epoch {epoch}/2: ")]
        assert [re.match(r"epoch \d/2: (\d+)/(\d+) batch", b).groups() for b in batches] == [
            (str(b), str(steps)) for b in range(1, steps + 1)
        ]
        assert all(re.search(r", loss \d+\.\d{4}", b) for b in batches)
        assert any("ETA" in b for b in batches[1:])  # from the second batch on it has a rate
        validation = [line for line in lines if line.startswith(f"epoch {epoch}/2 validation: ")]
        assert len(validation) == val_steps and validation[-1].startswith(f"epoch {epoch}/2 validation: {val_steps}/")
    assert not any(" in " in line for line in lines)  # no last line: Keras writes one per epoch


def test_predictions_and_gradcam_count_images(tiny_model, log_mode, caplog: pytest.LogCaptureFixture):
    from chestxray.learn.explain import BATCH, gradcam
    from chestxray.learn.models import predict_proba

    x = np.random.default_rng(0).integers(0, 256, (150, 32, 32, 1)).astype(np.uint8)
    with progress(len(x), "predict test") as bar:
        prob = predict_proba(tiny_model, x, bar)
    assert prob.shape == (150, 4)
    lines = [line.split(" (")[0] for line in logged(caplog)]
    assert lines[:3] == [f"predict test: {n}/150 img" for n in (64, 128, 150)]
    assert lines[3].startswith("predict test: 150 img in ")  # and with leave (the default), a last line
    with progress(40, "Grad-CAM gallery") as bar:
        gradcam(tiny_model, x[:40], bar=bar)
    cam_lines = [line.split(" (")[0] for line in logged(caplog) if line.startswith("Grad-CAM gallery: ")]
    assert cam_lines[:2] == [f"Grad-CAM gallery: {n}/40 img" for n in (BATCH, 40)]
