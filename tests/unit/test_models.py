"""Backbones: each one's own preprocessing, clear errors, and real ImageNet weights from disk."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from chestxray.backbones import BACKBONES
from chestxray.errors import UserError
from chestxray.models import Preprocess, build_model, unfreeze_top
from conftest import KERAS_HOME

WHITE = np.full((1, 4, 4, 1), 255.0, np.float32)
MV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        ("cnn", [1.0]),  # one channel scaled to [0, 1]
        ("mobilenetv2", [1.0, 1.0, 1.0]),  # [-1, 1]
        # caffe mode: BGR with the ImageNet means subtracted, no scaling
        ("vgg16", [255 - 103.939, 255 - 116.779, 255 - 123.68]),
        ("vgg19", [255 - 103.939, 255 - 116.779, 255 - 123.68]),
        ("resnet50", [255 - 103.939, 255 - 116.779, 255 - 123.68]),
    ],
)
def test_each_backbone_gets_its_own_preprocessing(backbone, expected):
    out = keras.ops.convert_to_numpy(Preprocess(backbone)(WHITE))
    assert out.shape == (1, 4, 4, len(expected))
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-5)
    black = keras.ops.convert_to_numpy(Preprocess(backbone)(np.zeros_like(WHITE)))
    low = {"cnn": 0.0, "mobilenetv2": -1.0}.get(backbone)
    if low is not None:
        assert np.allclose(black, low)


def test_rgb_channel_order_is_flipped_for_caffe_models():
    rgb = np.zeros((1, 1, 1, 3), np.float32)
    rgb[..., 0] = 255.0  # pure red
    out = keras.ops.convert_to_numpy(Preprocess("vgg16")(rgb))[0, 0, 0]
    np.testing.assert_allclose(out, [-103.939, -116.779, 255 - 123.68], rtol=1e-5)  # red is last (BGR)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_and_round_trips(name, tmp_path):
    settings = {"filters": [4, 8]} if name == "cnn" else ({"alpha": 0.35} if name == "mobilenetv2" else {})
    model, _ = build_model(name, 32, 3, "none", {"learning_rate": 0.001, **settings}, 0.2)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    prob = model.predict(x, verbose=0)
    assert prob.shape == (2, 3) and np.allclose(prob.sum(axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), prob, atol=1e-6)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown model 'alexnet'; valid: cnn, mobilenetv2, resnet50, vgg16, vgg19"):
        build_model("alexnet", 32, 2, "none", {}, 0.0)


def test_unknown_backbone_setting_is_named():
    with pytest.raises(UserError, match=r"backbones.vgg16 has a setting VGG16 does not take"):
        build_model("vgg16", 32, 2, "none", {"learning_rate": 0.1, "depth": 3}, 0.0)


def test_imagenet_offline_names_the_file_and_the_folder(monkeypatch):
    """The real Keras download path, with no network: here there is none; elsewhere a closed local
    proxy port guarantees the download fails the same way instead of fetching 58 MB."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(UserError) as err:
        build_model("vgg16", 32, 2, "imagenet", {"learning_rate": 0.1}, 0.0)
    message = str(err.value)
    assert f"put vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in {KERAS_HOME / 'models'}/" in message
    assert "train.weights: none" in message and "\n" not in message


@pytest.mark.shared
def test_imagenet_weights_load_from_keras_home(keras_weights):
    """Real ImageNet weights (../shared) pre-seeded in $KERAS_HOME/models: Keras loads them from disk;
    at 64 px MobileNetV2 falls back to the 224 file."""
    keras_weights(MV2_035)
    pretrained, base = build_model("mobilenetv2", 64, 4, "imagenet", {"learning_rate": 0.001, "alpha": 0.35}, 0.2)
    _, random_base = build_model("mobilenetv2", 64, 4, "none", {"learning_rate": 0.001, "alpha": 0.35}, 0.2)
    assert base.count_params() == 410_208  # the published count for alpha 0.35, no top
    bn = base.get_layer("bn_Conv1")
    assert not np.allclose(bn.moving_variance.numpy(), 1.0)  # trained statistics, not the init
    assert not np.allclose(base.get_layer("Conv1").kernel.numpy(), random_base.get_layer("Conv1").kernel.numpy())


def test_unfreeze_top_keeps_batchnorm_frozen():
    _, base = build_model("mobilenetv2", 32, 2, "none", {"learning_rate": 0.1, "alpha": 0.35}, 0.0)
    n = unfreeze_top(base, 20)
    top = base.layers[-20:]
    assert n == sum(not isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    assert not any(layer.trainable for layer in base.layers[:-20])
    assert not any(layer.trainable for layer in top if isinstance(layer, keras.layers.BatchNormalization))
