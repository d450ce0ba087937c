"""Backbones: each one's own preprocessing, clear errors, and real ImageNet weights from disk."""

from __future__ import annotations

import urllib.request

import h5py
import keras
import numpy as np
import pytest

from chestxray.config import HeadSettings
from chestxray.errors import UserError
from chestxray.learn.backbones import BACKBONES
from chestxray.learn.models import Preprocess, build_model, unfreeze_top
from conftest import KERAS_HOME

WHITE = np.full((1, 4, 4, 1), 255.0, np.float32)
MV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
HEAD = HeadSettings(dense=[], dropout=0.2)
CAFFE = [255 - 103.939, 255 - 116.779, 255 - 123.68]  # BGR with the ImageNet means subtracted, no scaling
TORCH_MEAN, TORCH_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# Small settings so every backbone builds and trains quickly at 32 px.
SMALL = {"cnn": {"filters": [4, 8]}, "mobilenet": {"alpha": 0.25}, "mobilenetv2": {"alpha": 0.35}}


@pytest.mark.parametrize(
    ("backbone", "white", "black"),
    [
        ("cnn", [1.0], [0.0]),  # one channel scaled to [0, 1]
        ("mobilenet", [1.0] * 3, [-1.0] * 3),  # [-1, 1]
        ("mobilenetv2", [1.0] * 3, [-1.0] * 3),
        ("resnet50v2", [1.0] * 3, [-1.0] * 3),
        ("vgg16", CAFFE, [-103.939, -116.779, -123.68]),
        ("vgg19", CAFFE, [-103.939, -116.779, -123.68]),
        ("resnet50", CAFFE, [-103.939, -116.779, -123.68]),
        ("densenet121", list((1 - TORCH_MEAN) / TORCH_STD), list(-TORCH_MEAN / TORCH_STD)),  # [0, 1] standardised
        ("efficientnetb0", [255.0] * 3, [0.0] * 3),  # 0-255: the model rescales inside
        ("efficientnetv2b0", [255.0] * 3, [0.0] * 3),
        ("convnext_tiny", [255.0] * 3, [0.0] * 3),
    ],
)
def test_each_backbone_gets_its_own_preprocessing(backbone, white, black):
    out = keras.ops.convert_to_numpy(Preprocess(backbone)(WHITE))
    assert out.shape == (1, 4, 4, len(white))
    np.testing.assert_allclose(out[0, 0, 0], white, rtol=1e-5)
    low = keras.ops.convert_to_numpy(Preprocess(backbone)(np.zeros_like(WHITE)))
    np.testing.assert_allclose(low[0, 0, 0], black, rtol=1e-5, atol=1e-6)


def test_every_backbone_has_a_preprocessing_case():
    cases = test_each_backbone_gets_its_own_preprocessing.pytestmark[0].args[1]
    assert sorted(c[0] for c in cases) == sorted(BACKBONES)


def test_rgb_channel_order_is_flipped_for_caffe_models():
    rgb = np.zeros((1, 1, 1, 3), np.float32)
    rgb[..., 0] = 255.0  # pure red
    out = keras.ops.convert_to_numpy(Preprocess("vgg16")(rgb))[0, 0, 0]
    np.testing.assert_allclose(out, [-103.939, -116.779, 255 - 123.68], rtol=1e-5)  # red is last (BGR)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_trains_one_step_and_round_trips(name, tmp_path):
    keras.utils.set_random_seed(0)
    model, base = build_model(name, 32, 3, "none", SMALL.get(name, {}), HEAD)
    assert base.trainable and model.get_layer("probabilities").units == 3
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in base.get_weights()]
    model.train_on_batch(x, y)
    changed = [not np.array_equal(a, b) for a, b in zip(before, base.get_weights(), strict=True)]
    assert sum(changed) > len(changed) // 4  # the step reached the base, not only the head
    prob = model.predict(x, verbose=0)
    assert prob.shape == (4, 3) and np.allclose(prob.sum(axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), prob, atol=1e-5)


def test_head_is_configurable():
    model, _ = build_model("cnn", 32, 4, "none", {"filters": [4]}, HeadSettings(dense=[16, 8], dropout=0.4))
    head = [layer.name for layer in model.layers[3:]]
    assert head == [
        "pool",
        "head_bn",
        "head_dropout",
        "head_dense1",
        "head_dropout1",
        "head_dense2",
        "head_dropout2",
        "probabilities",
    ]
    assert [model.get_layer(f"head_dense{i}").units for i in (1, 2)] == [16, 8]
    assert model.get_layer("head_dropout2").rate == 0.4


def test_unknown_model_lists_valid_names():
    with pytest.raises(
        UserError,
        match=r"params\.yaml: model must be one of cnn, mobilenet, mobilenetv2, resnet50, resnet50v2, vgg16, vgg19, ",
    ):
        build_model("alexnet", 32, 2, "none", {}, HEAD)


def test_unknown_backbone_setting_is_named():
    with pytest.raises(UserError, match=r"backbones.vgg16 has a setting VGG16 does not take"):
        build_model("vgg16", 32, 2, "none", {"depth": 3}, HEAD)


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("densenet121", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("efficientnetb0", "efficientnetb0_notop.h5"),
    ],
)
def test_imagenet_offline_names_the_file_and_the_folder(monkeypatch, name, file):
    """The real Keras download path, with no network: here there is none; elsewhere a closed local
    proxy port guarantees the download fails the same way instead of fetching the file."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    # urllib keeps the first opener it builds, with the proxies of that moment: drop it afterwards
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(UserError) as err:
        build_model(name, 32, 2, "imagenet", {}, HEAD)
    message = str(err.value)
    assert f"put {file} in {KERAS_HOME / 'models'}/" in message
    assert "train.weights: none" in message and "\n" not in message


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "alpha", "file", "first_conv"),
    [
        ("mobilenetv2", 0.35, MV2_035, "Conv1"),
        ("mobilenetv2", 0.5, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5", "Conv1"),
        ("mobilenet", 0.25, "mobilenet_2_5_224_tf_no_top.h5", "conv1"),
    ],
)
def test_imagenet_weights_load_from_keras_home(keras_weights, name, alpha, file, first_conv):
    """Real ImageNet weights (../shared) pre-seeded in $KERAS_HOME/models: Keras loads them from disk
    (at 64 px the MobileNets fall back to the 224 file); the first conv equals the file's kernel."""
    path = keras_weights(file)
    _, base = build_model(name, 64, 4, "imagenet", {"alpha": alpha}, HEAD)
    _, random_base = build_model(name, 64, 4, "none", {"alpha": alpha}, HEAD)
    with h5py.File(path) as h5:
        kernel = h5[f"{first_conv}/{first_conv}/kernel:0"][()]
    np.testing.assert_array_equal(base.get_layer(first_conv).kernel.numpy(), kernel)
    assert not np.allclose(random_base.get_layer(first_conv).kernel.numpy(), kernel)
    bn = base.layers[2]  # the first BatchNorm
    assert isinstance(bn, keras.layers.BatchNormalization) and not np.allclose(bn.moving_variance.numpy(), 1.0)
    if alpha == 0.35:
        assert base.count_params() == 410_208  # the published count for MobileNetV2 alpha 0.35, no top


@pytest.mark.parametrize(("name", "n_layers"), [("mobilenetv2", 20), ("efficientnetb0", 100)])
def test_unfreeze_top_opens_exactly_the_top_layers_but_batchnorm(name, n_layers):
    settings = SMALL.get(name, {})
    model, base = build_model(name, 32, 2, "none", settings, HEAD)
    base.trainable = False
    n = unfreeze_top(base, n_layers)
    top = base.layers[-n_layers:]
    expected = [layer.name for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]
    assert n == len(expected) and [layer.name for layer in base.layers if layer.trainable] == expected
    head = ["head_bn", "probabilities"]
    expected_weights = sum(len(layer.trainable_weights) for layer in top if layer.trainable)
    assert len(model.trainable_weights) == expected_weights + sum(
        len(model.get_layer(h).trainable_weights) for h in head
    )
