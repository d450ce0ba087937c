"""Backbone registry: name → Keras application and the module holding its own preprocess_input.

Kept free of Keras imports so params can be validated without loading TensorFlow. Adding a
backbone is one entry here (and its settings under ``backbones.<name>`` in params.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    """``application``: class in ``keras.applications`` (None: the project's small CNN).
    ``module``: submodule of ``keras.applications`` whose ``preprocess_input`` the backbone needs."""

    application: str | None
    module: str | None


BACKBONES: dict[str, Backbone] = {
    "cnn": Backbone(None, None),
    "mobilenetv2": Backbone("MobileNetV2", "mobilenet_v2"),
    "resnet50": Backbone("ResNet50", "resnet50"),
    "vgg16": Backbone("VGG16", "vgg16"),
    "vgg19": Backbone("VGG19", "vgg19"),
}

# Settings under backbones.<name> that the trainer uses; the rest go to the constructor.
TRAINING_KEYS = ("learning_rate",)
