"""The fused augmentation (learn/inputs.py): one resampling that does what Keras' layers did,
seeded per batch in tf.data, or inside the model (the GPU path) on uint8 batches."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray.config import AugmentSettings
from chestxray.learn.inputs import Augment, augmenter, make_dataset, projective_transforms, resample

ALL = AugmentSettings(rotation=0.1, shift=0.1, shear=0.2, zoom=0.1, contrast=0.0, flip=True)  # geometric only
DEFAULT = AugmentSettings(rotation=0.03, shift=0.05, shear=0.0, zoom=0.0, contrast=0.1, flip=False)  # params.yaml
SIZE = 32


def square(top: int, left: int, side: int = 4, batch: int = 1) -> np.ndarray:
    """uint8 batch (batch, SIZE, SIZE, 1): black with one white square."""
    images = np.zeros((batch, SIZE, SIZE, 1), np.uint8)
    images[:, top : top + side, left : left + side] = 255
    return images


def draws(n: int = 1, **values) -> dict[str, tf.Tensor]:
    """The identity draws for ``n`` images, with ``values`` (one per image) in their place."""
    neutral = {"angle": 0.0, "shift": (0.0, 0.0), "shear": (0.0, 0.0), "zoom": 1.0, "contrast": 1.0, "flip": False}
    return {k: tf.constant([values.get(k, v)] * n) for k, v in neutral.items()}


def test_a_shift_moves_the_square_by_that_many_pixels():
    out = Augment(ALL, 0).apply(square(10, 8), draws(shift=(5.0, -3.0))).numpy()
    assert np.array_equal(out, square(7, 13).astype(np.float32))  # right 5, up 3, exactly


def test_no_rotation_and_no_shift_is_the_identity():
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, 24, 1), dtype=np.uint8)
    assert np.array_equal(Augment(ALL, 0).apply(images, draws(3)).numpy(), images.astype(np.float32))


def test_flip_mirrors_left_right():
    images = square(5, 2)
    assert np.array_equal(Augment(ALL, 0).apply(images, draws(flip=True)).numpy(), images[:, :, ::-1].astype("f4"))


def test_a_quarter_turn_rotates_about_the_centre():
    images = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 1), dtype=np.uint8)
    out = Augment(ALL, 0).apply(images, draws(angle=math.pi / 2)).numpy()
    np.testing.assert_allclose(out, np.rot90(images, 1, axes=(1, 2)), atol=0.01)


def test_shear_tilts_a_vertical_bar_about_the_centre():
    images = np.zeros((1, SIZE, SIZE, 1), np.uint8)
    images[:, :, 12:20] = 255
    out = Augment(ALL, 0).apply(images, draws(shear=(0.25, 0.0))).numpy()[0, :, :, 0]
    centres = (out * np.arange(SIZE)).sum(axis=1) / out.sum(axis=1)  # of the bar, per row
    slope, middle = np.polyfit(np.arange(SIZE) - (SIZE - 1) / 2, centres, 1)
    assert slope == pytest.approx(-0.25, abs=1e-3) and middle == pytest.approx(15.5, abs=1e-3)


def test_resampling_is_the_projective_transform_op():
    """One bilinear resampling, constant fill 0: what ImageProjectiveTransformV3 computes."""
    images = np.random.default_rng(2).integers(0, 256, (6, 40, 48, 1), dtype=np.uint8)
    augment = Augment(ALL, 0)
    transforms = projective_transforms(augment.sample(images, tf.constant([3, 4], tf.int64)), 40, 48)
    expected = tf.raw_ops.ImageProjectiveTransformV3(
        images=images.astype(np.float32),
        transforms=transforms,
        output_shape=[40, 48],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    np.testing.assert_allclose(resample(images, transforms).numpy(), expected.numpy(), atol=0.01)


@pytest.mark.parametrize("layer", ["rotation", "translation", "zoom", "contrast"])
def test_same_draw_same_image_as_the_keras_layer(layer):
    """Keras' preprocessing layers, given one random draw, and this augmentation given the same draw."""
    images = np.random.default_rng(3).integers(0, 256, (4, SIZE, SIZE, 1)).astype(np.float32)
    keras_layer = {
        "rotation": keras.layers.RandomRotation(0.2, fill_mode="constant", seed=1),
        "translation": keras.layers.RandomTranslation(0.2, 0.2, fill_mode="constant", seed=1),
        "zoom": keras.layers.RandomZoom(0.3, fill_mode="constant", seed=1),
        "contrast": keras.layers.RandomContrast(0.5, value_range=(0, 255), seed=1),
    }[layer]
    drawn = keras_layer.get_random_transformation(images, training=True)
    ours = {
        "rotation": lambda t: {"angle": np.radians(t["angle"])},
        "translation": lambda t: {"shift": t["translations"]},  # pixels, (x, y)
        "zoom": lambda t: {"zoom": t["height_zoom"][:, 0]},
        "contrast": lambda t: {"contrast": t["contrast_factor"][:, 0, 0, 0]},
    }[layer](drawn)
    same = draws(4)
    same.update({k: tf.constant(v, tf.float32) for k, v in ours.items()})
    settings = AugmentSettings(rotation=0.2, shift=0.2, shear=0.0, zoom=0.3, contrast=0.5, flip=False)
    expected = keras_layer.transform_images(images, drawn, training=True)
    np.testing.assert_allclose(Augment(settings, 0).apply(images, same).numpy(), np.asarray(expected), atol=0.01)


def test_draws_stay_within_the_settings_and_contrast_within_range():
    cfg = AugmentSettings(rotation=0.05, shift=0.1, shear=0.2, zoom=0.15, contrast=0.9, flip=True)
    images = np.random.default_rng(4).integers(0, 256, (500, 8, 8, 1), dtype=np.uint8)
    augment = Augment(cfg, 0)
    drawn = {k: v.numpy() for k, v in augment.sample(images, tf.constant([5, 6], tf.int64)).items()}
    assert np.abs(drawn["angle"]).max() <= 0.05 * 2 * math.pi and np.abs(drawn["shift"]).max() <= 0.1 * 8
    assert np.abs(drawn["shear"]).max() <= 0.2 and np.abs(drawn["zoom"] - 1).max() <= 0.15
    assert np.abs(drawn["contrast"] - 1).max() <= 0.9 and 200 < drawn["flip"].sum() < 300
    assert np.abs(drawn["angle"]).max() > 0.04 * 2 * math.pi  # the whole range is used
    out = augment.apply(images, drawn).numpy()
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 255.0  # clipped, not beyond


def test_all_off_is_no_augmentation():
    off = AugmentSettings(rotation=0, shift=0, shear=0, zoom=0, contrast=0, flip=False)
    assert augmenter(off, 0) is None
    images = square(4, 4, batch=2)
    only_contrast = augmenter(off.model_copy(update={"contrast": 0.5}), 0)
    assert not only_contrast.geometric  # no resampling: the square keeps its place and its edges
    out = only_contrast.transform(images, tf.constant([1, 1], tf.int64)).numpy()
    assert np.array_equal(out > out.mean(axis=(1, 2, 3), keepdims=True), images > 0)


def epochs(seed: int, n_epochs: int = 2) -> list[np.ndarray]:
    """Every augmented batch of ``n_epochs`` epochs over a fixed set of 40 images."""
    images = np.random.default_rng(5).integers(0, 256, (40, SIZE, SIZE, 1), dtype=np.uint8)
    ds = make_dataset(images, np.arange(40) % 2, 16, True, seed, augmenter(DEFAULT, seed))
    return [np.concatenate([batch for batch, _ in ds.as_numpy_iterator()]) for _ in range(n_epochs)]


RERUN = """
import hashlib, sys
import keras
sys.path.insert(0, sys.argv[1])
from test_augment import epochs
for seed in (7, 8):
    keras.utils.set_random_seed(seed)  # as training seeds everything
    print(hashlib.sha256(b"".join(e.tobytes() for e in epochs(seed))).hexdigest())
"""


def test_same_seed_same_augmented_batches_on_a_rerun():
    """In tf.data (parallel map calls): two runs of a process agree batch for batch; each seed and
    each epoch differ."""
    here = str(Path(__file__).parent)
    processes = [subprocess.Popen([sys.executable, "-c", RERUN, here], stdout=subprocess.PIPE, text=True) for _ in "ab"]
    runs = [p.communicate(timeout=300)[0].split() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert runs[0] == runs[1] and len(runs[0]) == 2 and runs[0][0] != runs[0][1]
    first, second = epochs(7)
    assert first.shape == (40, SIZE, SIZE, 1) and not np.array_equal(first, second)


@pytest.mark.parametrize("on_device", [False, True], ids=["in tf.data", "in the model"])
def test_a_small_model_learns_through_the_augmentation(on_device, tmp_path):
    """Dark against bright images: learnt through augmented batches, in tf.data (float32 batches)
    or in the model (uint8 batches, the GPU path); the model's Augment layer changes images only
    in training and is saved with the model."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(6)
    y = np.arange(64) % 2
    x = np.clip(rng.normal(60 + 120 * y[:, None, None, None], 25, (64, SIZE, SIZE, 1)), 0, 255).astype(np.uint8)
    augment = augmenter(DEFAULT, 0, on_device=on_device)
    batch, _ = next(iter(make_dataset(x, y, 16, False, 0, augment)))
    assert batch.dtype == (tf.uint8 if on_device else tf.float32)
    assert np.array_equal(batch.numpy(), x[:16]) == on_device  # uint8 as cached, or augmented
    inputs = keras.Input((SIZE, SIZE, 1))
    h = augment(inputs) if on_device else inputs
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(h))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(make_dataset(x, y, 16, True, 0, augment), epochs=8, verbose=0)
    assert model.evaluate(x.astype(np.float32), y, verbose=0)[1] == 1.0
    if on_device:
        assert np.array_equal(augment(x[:4], training=False).numpy(), x[:4].astype(np.float32))
        assert not np.array_equal(augment(x[:4], training=True).numpy(), x[:4].astype(np.float32))
        model.save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras")
        assert loaded.layers[1].get_config()["settings"] == DEFAULT.model_dump()
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
