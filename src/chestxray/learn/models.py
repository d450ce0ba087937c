"""Keras models: backbone (ImageNet or random weights) + its own preprocessing + a classifier head."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from chestxray.config import HeadSettings
from chestxray.errors import UserError
from chestxray.learn import backbones
from chestxray.learn.callbacks import PredictProgress
from chestxray.learn.inputs import make_dataset
from chestxray.progress import Progress

# Keras' default BatchNorm momentum (0.99) leaves the moving statistics near their initial values
# for hundreds of steps; a small dataset gives a few dozen steps per epoch, and the model then
# predicts one class at inference. 0.9 tracks the batch statistics within an epoch.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="chestxray")
class Preprocess(layers.Layer):
    """Grey images in [0, 255] → what the backbone expects: 3 channels and its ``preprocess_input``.

    Living inside the model, the preprocessing travels with the saved model to evaluation,
    MLflow and prediction, so no caller can pair a model with the wrong preprocessing.
    """

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        module = backbones.get(backbone).module
        self._preprocess = getattr(keras.applications, module).preprocess_input if module else None

    def call(self, x):
        x = ops.cast(x, "float32")
        if self._preprocess is None:  # the small CNN: one channel, scaled to [0, 1]
            return x / 255.0
        if x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        return self._preprocess(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="chestxray")
class SparseFocalLoss(keras.losses.Loss):
    """Focal loss (Lin et al., 2017) on integer labels: −α_y (1 − p_y)^γ log p_y, per sample.

    Keras' categorical focal crossentropy with a per-class ``alpha`` on one-hot labels.
    """

    def __init__(self, alpha: Sequence[float], gamma: float, name: str = "focal_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.alpha, self.gamma = [float(a) for a in alpha], float(gamma)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, len(self.alpha), dtype=y_pred.dtype)
        alpha = ops.convert_to_tensor(self.alpha, dtype=y_pred.dtype)
        return keras.losses.categorical_focal_crossentropy(one_hot, y_pred, alpha=alpha, gamma=self.gamma)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


def build_model(
    name: str,
    image_size: int,
    n_classes: int,
    weights: str,
    settings: dict[str, Any],
    head: HeadSettings,
    augment: layers.Layer | None = None,
) -> tuple[keras.Model, keras.Model]:
    """Return (model, base): input (size, size, 1) grey 0–255 → class probabilities.

    A pretrained base runs in inference mode (``training=False``) so its BatchNorm statistics
    stay fixed, also once its top layers are unfrozen for fine-tuning. The head is global average
    pooling → batch norm → dropout → ``head.dense`` hidden layers → softmax (kept in float32
    under mixed precision). ``settings`` are the base's constructor arguments (``backbones.<name>``
    less its learning rate). ``augment``, an on-device augmentation, goes first: it augments in
    training and passes images through otherwise.
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = Preprocess(name, name="preprocess")(inputs if augment is None else augment(inputs))
    base = _base(name, image_size, weights, settings)
    x = base(x, training=False) if is_pretrained(name, weights) else base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = layers.Dropout(head.dropout, name="head_dropout")(x)
    for i, units in enumerate(head.dense, start=1):
        x = layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
        x = layers.Dropout(head.dropout, name=f"head_dropout{i}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{name}_classifier"), base


def predict_proba(model: keras.Model, x: np.ndarray, bar: Progress | None = None) -> np.ndarray:
    """Class probabilities of grey images ``x`` (N, S, S, 1), float64 with rows renormalised
    (a float32 softmax sums to 1 ± 1e-7); batches are gathered from ``x``, which may be a memory map.
    Each batch's images are counted into ``bar``."""
    prob = model.predict(
        make_dataset(x, np.zeros(len(x), np.int64), 64, False, 0).map(lambda images, _: images),
        verbose=0,
        callbacks=[PredictProgress(bar)] if bar is not None else [],
    )
    prob = prob.astype(np.float64)
    return prob / prob.sum(axis=1, keepdims=True)


def is_pretrained(name: str, weights: str) -> bool:
    """Whether the base starts from ImageNet weights (the small CNN never does)."""
    return weights == "imagenet" and backbones.get(name).application is not None


def unfreeze_top(base: keras.Model, n_layers: int) -> int:
    """Make the top ``n_layers`` of ``base`` trainable, BatchNorm excepted; return how many are."""
    base.trainable = True
    cut = max(len(base.layers) - n_layers, 0)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
    return sum(layer.trainable for layer in base.layers)


def keras_models_dir() -> Path:
    """Where Keras looks for cached weights: ``$KERAS_HOME/models`` (default ~/.keras/models),
    as Keras resolved it when it was imported."""
    from keras.src.backend.config import keras_home

    return Path(keras_home()).expanduser() / "models"


def _base(name: str, image_size: int, weights: str, settings: dict[str, Any]) -> keras.Model:
    application = backbones.get(name).application
    if application is None:
        return _small_cnn(image_size, **settings)
    constructor = getattr(keras.applications, application)
    try:
        return constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(image_size, image_size, 3),
            **settings,
        )
    except TypeError as exc:
        raise UserError(f"params.yaml: backbones.{name} has a setting {application} does not take ({exc})") from None
    except ValueError as exc:
        raise UserError(f"params.yaml: {name} cannot be built with these settings: {exc}") from None
    except Exception as exc:
        url = re.search(r"https?://\S+?\.h5", str(exc))
        if not url:
            raise
        file = url.group(0).rsplit("/", 1)[1]
        raise UserError(
            f"ImageNet weights for {name} are not cached and cannot be downloaded ({url.group(0)}): "
            f"put {file} in {keras_models_dir()}/ (the folder $KERAS_HOME/models), or set train.weights: none"
        ) from None


def _small_cnn(image_size: int, filters: list[int]) -> keras.Model:
    """A small VGG-style CNN: per block two 3×3 conv + BatchNorm + ReLU, then 2×2 max-pooling."""
    inputs = keras.Input((image_size, image_size, 1))
    x = inputs
    for i, f in enumerate(filters):
        for j in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv{j + 1}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{i + 1}_bn{j + 1}")(x)
            x = layers.ReLU(name=f"block{i + 1}_relu{j + 1}")(x)
        x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    return keras.Model(inputs, x, name="cnn")
