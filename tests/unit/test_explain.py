"""Grad-CAM on real Keras models of every backbone, a planted signal it must find, overlays and
the gallery folder (real PNGs, written atomically)."""

from __future__ import annotations

import json

import keras
import matplotlib
import numpy as np
import pytest
from PIL import Image

from chestxray.config import HeadSettings
from chestxray.judge import gallery as gallery_module
from chestxray.judge.gallery import gallery
from chestxray.learn.backbones import BACKBONES
from chestxray.learn.explain import MIN_SIDE, gradcam, overlay, target_layer
from chestxray.learn.models import build_model

HEAD = HeadSettings(dense=[], dropout=0.0)
# Small settings where a backbone has them (the chosen layer does not depend on the width).
SMALL = {"cnn": {"filters": [8, 16]}, "mobilenet": {"alpha": 0.25}, "mobilenetv2": {"alpha": 0.35}}
S, SQUARE = 32, 8  # planted-signal images: side and the bright square's side
CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def noise(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1)).astype(np.uint8)


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dim noise; every odd image (class 1) has a white SQUARE × SQUARE square at a random place.
    Returns (images, labels, masks of the squares)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, S, S, 1)).astype(np.uint8)
    y = np.arange(n) % 2
    mask = np.zeros((n, S, S), bool)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, S - SQUARE + 1, 2)
        mask[i, r : r + SQUARE, c : c + SQUARE] = True
    x[mask] = 255
    return x, y, mask


@pytest.fixture(scope="module")
def square_model() -> keras.Model:
    """A small CNN trained (about 2 s) to tell images with the bright square (class 1) apart."""
    keras.utils.set_random_seed(0)
    x, y, _ = planted(256, seed=0)
    model, _ = build_model("cnn", S, 2, "none", {"filters": [8, 16]}, HEAD)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=4, batch_size=32, verbose=0)
    return model


# The layer picked at 64 px, where every application's output is 2×2: the last 4×4 map that all
# paths pass through. None: an auto-named op (its number depends on what was built before).
@pytest.mark.parametrize(
    ("name", "layer", "op_type"),
    [
        ("cnn", "block2_pool", "MaxPooling2D"),  # the base's output (16×16) is large enough
        ("mobilenet", "conv_pw_11_relu", "ReLU"),  # not conv_pad_12 (5×5, zero-padded)
        ("mobilenetv2", "block_13_expand_relu", "ReLU"),
        ("resnet50", "conv4_block6_out", "Activation"),
        ("resnet50v2", "conv4_block5_out", "Add"),  # not conv4_block6_1_relu: inside a residual branch
        ("vgg16", "block5_conv3", "Conv2D"),
        ("vgg19", "block5_conv4", "Conv2D"),
        ("densenet121", "pool4_conv", "Conv2D"),
        ("efficientnetb0", "block6a_expand_activation", "Activation"),
        ("efficientnetv2b0", "block6a_expand_activation", "Activation"),
        ("convnext_tiny", None, "Add"),  # the residual sum (an op, not a layer), not the branch's last layer
    ],
)
def test_gradcam_works_for_every_backbone(name, layer, op_type):
    """Random weights give maps of both signs: explaining one class can be all zero after the ReLU
    (its weighted sum is negative everywhere), so each image is explained for every class; each
    map is zero or peaks at exactly 1, and at least one class per image gives a non-constant map."""
    keras.utils.set_random_seed(0)
    model, _ = build_model(name, 64, 3, "none", SMALL.get(name, {}), HEAD)
    target = target_layer(model)
    assert type(target).__name__ == op_type and (layer is None or target.name == layer)
    assert min(target.output.shape[1:3]) >= MIN_SIDE
    n, k = 2, 3
    maps = gradcam(model, np.tile(noise(n, 64), (k, 1, 1, 1)), np.repeat(np.arange(k), n))
    assert maps.shape == (k * n, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0
    peaks = maps.max(axis=(1, 2))
    assert set(peaks.tolist()) <= {0.0, 1.0}
    assert np.all(maps[peaks == 1].std(axis=(1, 2)) > 0.01)
    assert np.all((peaks == 1).reshape(k, n).any(axis=0))


def test_every_backbone_is_covered():
    cases = test_gradcam_works_for_every_backbone.pytestmark[0].args[1]
    assert sorted(c[0] for c in cases) == sorted(BACKBONES)


@pytest.mark.parametrize(
    ("name", "size", "settings", "layer"),
    [
        ("mobilenetv2", 224, {"alpha": 0.35}, "out_relu"),  # 7×7: the base's output
        ("cnn", 64, {"filters": [32, 64, 128]}, "block3_pool"),  # params.yaml's CNN: 8×8 output
        ("cnn", 8, {"filters": [4, 8]}, "block2_relu2"),  # output 2×2: the last 4×4 map
        ("cnn", 2, {"filters": [4]}, "block1_relu2"),  # no map reaches 4: the largest (2×2), last
    ],
)
def test_target_layer_rule(name, size, settings, layer):
    model, _ = build_model(name, size, 2, "none", settings, HEAD)
    assert target_layer(model).name == layer


def test_gradcam_finds_the_planted_square(square_model):
    x, y, mask = planted(64, seed=1)
    assert (square_model.predict(x, verbose=0).argmax(axis=1) == y).mean() >= 0.95
    ones = y == 1
    maps = gradcam(square_model, x[ones], np.ones(ones.sum(), int))
    inside = np.array([m[k].mean() for m, k in zip(maps, mask[ones], strict=True)])
    outside = np.array([m[~k].mean() for m, k in zip(maps, mask[ones], strict=True)])
    assert inside.mean() > 0.6 and outside.mean() < 0.15
    assert np.all(inside > outside + 0.3)


def test_predicted_class_is_the_default_and_batches_do_not_matter(square_model):
    x, _, _ = planted(40, seed=2)  # more than one batch of 32
    pred = square_model.predict(x, verbose=0).argmax(axis=1)
    default = gradcam(square_model, x)
    np.testing.assert_allclose(default, gradcam(square_model, x, pred), atol=1e-6)
    one_by_one = np.concatenate([gradcam(square_model, x[i : i + 1]) for i in (0, 1, 39)])
    np.testing.assert_allclose(one_by_one, default[[0, 1, 39]], atol=1e-5)
    other = gradcam(square_model, x, 1 - pred)
    assert np.abs(other - default).max(axis=(1, 2)).min() > 0.1  # every map changes with the class


def test_class_index_must_match_the_images(square_model):
    for wrong in ([0, 1], [0, 1, 2], [-1, 0, 0]):
        with pytest.raises(ValueError, match=r"class_index must be \(3,\) class numbers in \[0, 2\)"):
            gradcam(square_model, noise(3, S), np.array(wrong))


def test_empty_batch_gives_no_maps(square_model):
    assert gradcam(square_model, noise(0, S)).shape == (0, S, S)


@pytest.mark.parametrize(("name", "size"), [("trained cnn", S), ("mobilenetv2", 64)])
def test_saved_and_loaded_model_gives_the_same_maps(request, tmp_path, name, size):
    if name == "trained cnn":
        model = request.getfixturevalue("square_model")
        x = planted(8, seed=3)[0]
    else:
        keras.utils.set_random_seed(0)
        model, _ = build_model(name, size, 3, "none", SMALL[name], HeadSettings(dense=[8], dropout=0.2))
        x = noise(4, size)
    model.save(tmp_path / "model.keras")
    again = keras.models.load_model(tmp_path / "model.keras")
    assert target_layer(again).name == target_layer(model).name
    before = gradcam(model, x)
    assert before.max() == 1  # a real map, not only zeros
    np.testing.assert_allclose(gradcam(again, x), before, atol=1e-5)


def test_overlay_blends_the_jet_colour_over_the_grey_image():
    image = np.array([[100, 200], [0, 255]], np.uint8)
    heat = np.array([[0.0, 1.0], [0.5, 0.0]])
    out = overlay(image[..., None], heat, alpha=0.4)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    jet = matplotlib.colormaps["jet"]
    assert jet(0.0)[:3] == (0.0, 0.0, 0.5) and jet(1.0)[:3] == (0.5, 0.0, 0.0)
    np.testing.assert_array_equal(out[0, 0], [60, 60, 111])  # 0.6·100 + 0.4·(0, 0, 127.5)
    np.testing.assert_array_equal(out[0, 1], [171, 120, 120])  # 0.6·200 + 0.4·(127.5, 0, 0)
    np.testing.assert_array_equal(out[1, 1], [153, 153, 204])  # 0.6·255 + 0.4·(0, 0, 127.5)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), np.repeat(image[..., None], 3, axis=-1))
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((3, 3)))


def probabilities(pred: list[int], conf: list[float], k: int = 3) -> np.ndarray:
    """Rows with ``conf`` on the predicted class and the rest shared equally."""
    prob = np.repeat(((1 - np.array(conf)) / (k - 1))[:, None], k, axis=1)
    prob[np.arange(len(pred)), pred] = conf
    return prob


# Index: 0-3 COVID right (0.6, 0.9, 0.7, 0.8), 4 COVID called Normal, 5-6 Normal right,
# 7-8 Viral Pneumonia called COVID (0.5) and Normal (0.95).
Y = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2])
PRED = [0, 0, 0, 0, 1, 1, 1, 0, 1]
CONF = [0.6, 0.9, 0.7, 0.8, 0.55, 0.7, 0.99, 0.5, 0.95]
PATHS = [f"data/raw/{c}/img-{i}.png" for i, c in enumerate(np.array(CLASSES)[Y])]


@pytest.fixture(scope="module")
def gallery_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("cnn", S, 3, "none", {"filters": [8, 16]}, HEAD)[0]


def test_gallery_writes_one_figure_per_class_most_confident_first(gallery_model, tmp_path, monkeypatch):
    explained = []
    real = gallery_module.gradcam

    def spy(model, images, class_index=None, bar=None):
        explained.append((len(images), list(class_index)))
        return real(model, images, class_index, bar)

    monkeypatch.setattr(gallery_module, "gradcam", spy)
    out = tmp_path / "gradcam"
    summary = gallery(gallery_model, noise(9, S), Y, probabilities(PRED, CONF), CLASSES, PATHS, out, per_outcome=3)

    assert sorted(p.name for p in out.iterdir()) == ["COVID.png", "Normal.png", "Viral_Pneumonia.png", "index.md"]
    assert json.loads(json.dumps(summary)) == summary
    assert summary["layer"] == "block2_pool" and summary["per_outcome"] == 3
    covid, normal, viral = (summary["classes"][c] for c in CLASSES)
    assert covid["shown"] == {"correct": [1, 3, 2], "wrong": [4]}  # 0.9, 0.8, 0.7; 0.6 is cut
    assert (covid["correct"], covid["wrong"], covid["total_correct"], covid["total_wrong"]) == (3, 1, 4, 1)
    assert normal["shown"] == {"correct": [6, 5], "wrong": []}
    assert viral["shown"] == {"correct": [], "wrong": [8, 7]} and viral["file"] == "Viral_Pneumonia.png"
    assert explained == [(8, [0, 0, 0, 1, 1, 1, 1, 0])]  # only the shown images, their predicted class

    index = (out / "index.md").read_text(encoding="utf-8")
    assert "| COVID | 4 (3) | 1 (1) | [COVID.png](COVID.png) |" in index
    assert "| Normal | 2 (2) | 0 (0) | [Normal.png](Normal.png) |" in index
    assert "| Viral Pneumonia | 0 (0) | 2 (2) | [Viral_Pneumonia.png](Viral_Pneumonia.png) |" in index
    assert "explains the **predicted** class" in index and "`block2_pool`" in index
    for file in ("COVID.png", "Normal.png", "Viral_Pneumonia.png"):
        with Image.open(out / file) as png:
            rgb = np.asarray(png.convert("RGB")).astype(int)
        assert png.format == "PNG" and rgb.shape[1] > rgb.shape[0]  # three columns, two rows
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 60).sum() > 100  # coloured heatmaps, not only grey


@pytest.mark.parametrize("failure", ["bad prob shape", "save fails midway"])
def test_gallery_failure_leaves_the_old_gallery(gallery_model, tmp_path, monkeypatch, failure):
    out = tmp_path / "gradcam"
    out.mkdir()
    (out / "index.md").write_text("old gallery\n")
    prob = probabilities(PRED, CONF)
    if failure == "bad prob shape":
        prob, error = prob[:, :2], ValueError
    else:
        real, calls = gallery_module.save_figure, []

        def save_then_fail(fig, path):
            calls.append(path.name)
            if len(calls) == 2:
                raise OSError("disk full")
            real(fig, path)

        monkeypatch.setattr(gallery_module, "save_figure", save_then_fail)
        error = OSError
    with pytest.raises(error):
        gallery(gallery_model, noise(9, S), Y, prob, CLASSES, PATHS, out, per_outcome=2)
    assert [p.name for p in tmp_path.iterdir()] == ["gradcam"]  # no temp folder left behind
    assert [p.name for p in out.iterdir()] == ["index.md"]
    assert (out / "index.md").read_text() == "old gallery\n"
    if failure == "save fails midway":
        assert calls == ["COVID.png", "Normal.png"]
