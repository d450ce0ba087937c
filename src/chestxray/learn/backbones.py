"""Backbone registry: name → Keras application and the module holding its own preprocess_input.

Kept free of Keras imports so params can be checked without loading TensorFlow. Adding a
backbone is one entry here (and its settings under ``backbones.<name>`` in params.yaml).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from chestxray.config import BackboneSettings, Params
from chestxray.errors import UserError


@dataclass(frozen=True)
class Backbone:
    """``application``: class in ``keras.applications`` (None: the project's small CNN).
    ``module``: submodule of ``keras.applications`` whose ``preprocess_input`` the backbone needs
    (EfficientNet and ConvNeXt take 0–255 and rescale inside the model: theirs is the identity)."""

    application: str | None
    module: str | None


BACKBONES: dict[str, Backbone] = {
    "cnn": Backbone(None, None),
    "mobilenet": Backbone("MobileNet", "mobilenet"),
    "mobilenetv2": Backbone("MobileNetV2", "mobilenet_v2"),
    "resnet50": Backbone("ResNet50", "resnet50"),
    "resnet50v2": Backbone("ResNet50V2", "resnet_v2"),
    "vgg16": Backbone("VGG16", "vgg16"),
    "vgg19": Backbone("VGG19", "vgg19"),
    "densenet121": Backbone("DenseNet121", "densenet"),
    "efficientnetb0": Backbone("EfficientNetB0", "efficientnet"),
    "efficientnetv2b0": Backbone("EfficientNetV2B0", "efficientnet_v2"),
    "convnext_tiny": Backbone("ConvNeXtTiny", "convnext"),
}


def get(name: str) -> Backbone:
    """The backbone called ``name`` (params.yaml's ``model``)."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(name.lower(), BACKBONES, n=1, cutoff=0.7)  # resnet, vgg, CNN; not alexnet
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"params.yaml: model must be one of {', '.join(BACKBONES)}, got {name!r}{hint}")
    return BACKBONES[name]


def settings(params: Params) -> BackboneSettings:
    """``backbones.<model>`` of ``params``, once ``model`` is known to be a registered backbone."""
    get(params.model)
    if params.model not in params.backbones:
        raise UserError(f"params.yaml: missing key 'backbones.{params.model}'; add it with at least a learning_rate")
    return params.backbones[params.model]
