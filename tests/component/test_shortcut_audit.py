"""The shortcut audit on real Keras models trained on generated chest X-rays: a planted shortcut
(a bright square in a corner of every COVID image, outside the lungs) is caught, and unmarked data
pass. Also lung masks read at the model's size, and both audit measures on cases computed by hand.

The two classes are COVID and Normal: in the generator they differ only inside the lungs (COVID adds
peripheral opacities), while Viral Pneumonia chests are also smaller, a cue visible outside the
lungs (as the real paediatric images are), and Lung_Opacity is left out to keep the test small.

"Occlusion barely hurting" is measured both ways: by the lungs-removed experiment (a model trained
and tested border-only against one trained and tested on whole images), and by test-time occlusion of
the whole-image model (``occlusion_scores``, the hidden centre filled with the image's mean grey; a
black box made both models fall to one class, marked or not, so it could not tell them apart).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from chestxray.config import HeadSettings
from chestxray.data.images import load_gray
from chestxray.data.masks import load_mask
from chestxray.data.occlusion import occlude
from chestxray.data.radiography import DIR, IMAGES, MASKS
from chestxray.data.synthetic import generate
from chestxray.errors import UserError
from chestxray.judge.metrics import classification_metrics
from chestxray.judge.shortcuts import gradcam_in_lungs, occlusion_scores
from chestxray.learn.models import build_model, predict_proba
from chestxray.learn.training import seed_everything

log = logging.getLogger(__name__)

CLASSES = ["COVID", "Normal"]
S, FRACTION = 64, 0.6  # image side; the occluded central box's side, as audit.occlude
MARK = (slice(2, 10), slice(2, 10))  # an 8 × 8 white square in the top-left corner: no lung there
SEED = 0
HEAD = HeadSettings(dense=[], dropout=0.0)


@pytest.fixture(scope="module")
def chests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Every generated COVID image and as many Normal ones (51 each of 300 images), at 64 px with
    their lung masks; every third image of each class is a test image."""
    root = tmp_path_factory.mktemp("chests")
    count = generate(root, n_images=300, seed=1)["COVID"]
    x, y, masks = [], [], []
    for k, cls in enumerate(CLASSES):
        for n in range(1, count + 1):
            x.append(load_gray(root / DIR / cls / IMAGES / f"{cls}-{n}.png", S))
            masks.append(load_mask(root / DIR / cls / MASKS / f"{cls}-{n}.png", S))
            y.append(k)
    test = np.arange(len(y)) % 3 == 0
    return {"x": np.stack(x)[..., None], "y": np.array(y), "masks": np.stack(masks), "test": test, "root": root}


def fit(x: np.ndarray, y: np.ndarray) -> keras.Model:
    """The project's small CNN trained on ``x`` from a fixed seed, deterministically."""
    seed_everything(SEED, deterministic=True)
    model, _ = build_model("cnn", S, len(CLASSES), "none", {"filters": [8, 16, 32]}, HEAD)
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=25, batch_size=8, verbose=0)
    return model


def macro_f1(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return classification_metrics(y, predict_proba(model, x), CLASSES)["macro_f1"]


def audit(x: np.ndarray, chests: dict[str, np.ndarray]) -> dict:
    """The audit of images ``x``: a model trained on them whole, one trained and tested border-only,
    the whole-image model's test-time occlusion scores and its Grad-CAM mass inside the lungs."""
    y, test = chests["y"], chests["test"]
    full = fit(x[~test], y[~test])
    border = fit(occlude(x[~test], FRACTION), y[~test])
    out = {
        "full": macro_f1(full, x[test], y[test]),
        "border_only": macro_f1(border, occlude(x[test], FRACTION), y[test]),
        "occlusion": occlusion_scores(full, x[test], y[test], CLASSES, FRACTION),
        "gradcam": gradcam_in_lungs(full, x[test], y[test], chests["masks"][test], CLASSES),
    }
    log.info("audit: %s", out)
    return out


@pytest.fixture(scope="module")
def marked(chests: dict[str, np.ndarray]) -> dict:
    x = chests["x"].copy()
    x[chests["y"] == CLASSES.index("COVID"), MARK[0], MARK[1], :] = 255
    assert not chests["masks"][:, MARK[0], MARK[1]].any()  # the mark lies outside every lung
    return audit(x, chests)


@pytest.fixture(scope="module")
def unmarked(chests: dict[str, np.ndarray]) -> dict:
    return audit(chests["x"], chests)


# Measured with SEED 0, 1, 2, 3 (the lungs cover 0.18 of the image; macro-F1 by chance: 0.5).
# marked: whole 1.0, border-only 1.0, centre hidden at test time 0.82 / 1.0 / 1.0 / 1.0,
# Grad-CAM in lungs (COVID) 0.062 / 0.066 / 0.132 / 0.044, overall 0.08–0.10;
# unmarked: whole 0.88 / 0.72 / 0.76 / 0.85, border-only 0.32 / 0.38 / 0.45 / 0.44,
# centre hidden at test time 0.43 / 0.51 / 0.33 / 0.54,
# Grad-CAM in lungs (COVID) 0.29 / 0.27 / 0.30 / 0.20, overall 0.29 / 0.21 / 0.34 / 0.20.
def test_audit_catches_a_planted_shortcut(marked: dict) -> None:
    """The border alone tells the classes apart as well as the whole image, hiding the centre of the
    test images barely hurts, and the model explains COVID from outside the lungs: less mass on them
    than a model looking everywhere evenly."""
    assert marked["border_only"] >= 0.9
    assert marked["full"] - marked["border_only"] <= 0.1
    assert marked["occlusion"]["occluded"]["macro_f1"] >= 0.75
    assert marked["gradcam"]["COVID"] < marked["gradcam"]["lung_area"]


def test_audit_clears_unmarked_data(unmarked: dict) -> None:
    """Without the mark the signal is in the lungs: border-only is near chance, far below the
    whole-image model, and hiding the centre of the test images costs the whole-image model much."""
    assert unmarked["border_only"] <= 0.65
    assert unmarked["full"] - unmarked["border_only"] >= 0.2
    assert unmarked["occlusion"]["occluded"]["macro_f1"] <= 0.6
    assert unmarked["full"] - unmarked["occlusion"]["occluded"]["macro_f1"] >= 0.15


def test_gradcam_in_lungs_tells_marked_from_unmarked(marked: dict, unmarked: dict) -> None:
    """The share for the marked class drops once the mark is there, and so does the overall one
    (Normal images carry neither mark nor disease: explaining them shows where "nothing" is)."""
    assert unmarked["gradcam"]["COVID"] - marked["gradcam"]["COVID"] >= 0.1
    assert unmarked["gradcam"]["overall"] - marked["gradcam"]["overall"] >= 0.05


def test_load_mask_reads_a_generated_mask_at_the_model_size(chests: dict) -> None:
    path = chests["root"] / DIR / "COVID" / MASKS / "COVID-1.png"
    with Image.open(path) as im:
        assert (im.mode, im.size) == ("RGB", (256, 256))
        full = np.asarray(im.convert("L")) > 127
    assert np.array_equal(load_mask(path, 256), full)
    small = load_mask(path, S)
    assert small.shape == (S, S) and small.dtype == bool
    assert abs(small.mean() - full.mean()) < 0.01  # the same share of the image at 64 px
    assert not small[0].any() and not small[:, 0].any()  # no lung on the image's edge


def test_load_mask_takes_0_1_masks_and_names_an_unreadable_file(chests: dict, tmp_path: Path) -> None:
    path = chests["root"] / DIR / "Normal" / MASKS / "Normal-1.png"
    with Image.open(path) as im:
        ones = np.asarray(im.convert("L")) // 255
    Image.fromarray(ones.astype(np.uint8)).save(tmp_path / "ones.png")
    assert np.array_equal(load_mask(tmp_path / "ones.png", S), load_mask(path, S))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"broken\.png: cannot read this lung mask"):
        load_mask(tmp_path / "broken.png", S)


def test_occlusion_scores_by_hand() -> None:
    """A real Keras model that says COVID when the mean brightness is above 100. COVID images are all
    200; Normal images 20 with a central box (6 × 6 of 10 × 10) of 150, mean 66.8. The removed part
    takes the mean grey of the part kept. Occluded: COVID 200, Normal 20, all right. Lungs only:
    COVID 200, Normal 150: every image called COVID, accuracy 0.5, F1 2·2 / (2·2 + 2) for COVID and 0
    for Normal. (Filled black, lungs only would call every image Normal: 72 and 54.)"""
    model = keras.Sequential([keras.Input((10, 10, 1)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.array([[1.0, 0.0]]), np.array([-100.0, 0.0])])
    model = keras.Sequential([model, keras.layers.Softmax()])
    x = np.repeat(np.array([200, 200, 20, 20], np.uint8), 100).reshape(4, 10, 10, 1)
    x[2:, 2:8, 2:8] = 150
    assert predict_proba(model, x).argmax(axis=1).tolist() == [0, 0, 1, 1]
    scores = occlusion_scores(model, x, np.array([0, 0, 1, 1]), CLASSES, FRACTION)
    assert scores == {
        "occluded": {"macro_f1": 1.0, "accuracy": 1.0},
        "lungs_only": {"macro_f1": pytest.approx(1 / 3, abs=1e-6), "accuracy": 0.5},
    }


def test_gradcam_in_lungs_by_hand(chests: dict) -> None:
    """One image four times, with masks: everything, nothing, the left half, the right half. The
    maps are the same, so the shares are 1, 0 and two that add up to 1: mean 0.5, as the masks'
    area. A model whose output layer is all zero has no gradient, hence all-zero maps: left out."""
    seed_everything(SEED, deterministic=True)
    model, _ = build_model("cnn", S, len(CLASSES), "none", {"filters": [8, 16]}, HEAD)
    x = np.repeat(chests["x"][:1], 4, axis=0)
    masks = np.zeros((4, S, S), bool)
    masks[0], masks[2, :, : S // 2], masks[3, :, S // 2 :] = True, True, True
    y = np.zeros(4, int)
    shares = gradcam_in_lungs(model, x, y, masks, CLASSES)
    assert shares == {"COVID": 0.5, "Normal": None, "overall": 0.5, "lung_area": 0.5, "n": 4, "empty": 0}
    output = model.get_layer("probabilities")
    output.set_weights([np.zeros_like(w) for w in output.get_weights()])
    empty = gradcam_in_lungs(model, x, y, masks, CLASSES)
    assert empty == {"COVID": None, "Normal": None, "overall": None, "lung_area": 0.5, "n": 0, "empty": 4}
