"""Training callbacks: the weights' moving average with BatchNorm statistics recomputed for it, the
validation macro-F1 in every epoch's logs, and progress in a log (batches of fit, images of predict)."""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from chestxray.counts import confusion, macro_f1
from chestxray.progress import Progress, progress

log = logging.getLogger(__name__)

# The recompute pass reads at most this many training batches (1024 images at batch 32): enough for
# per-channel means and variances, and a bounded cost per epoch on a large training split.
BN_BATCHES = 32


def monitor_mode(monitor: str) -> str:
    """Which way ``monitor`` improves: "min" for a loss, "max" for accuracy and macro-F1."""
    return "min" if monitor.endswith("loss") else "max"


def trainable_batchnorm(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The BatchNorm layers of ``model`` (nested models included) that normalise with batch statistics
    in training mode: the trainable ones. A pretrained base's are frozen (and the base runs in
    inference mode), so they keep their ImageNet statistics."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += trainable_batchnorm(layer)
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
    return found


class BatchNormPass:
    """One pass over training batches (at most ``BN_BATCHES``) that sets each trainable BatchNorm
    layer's moving mean and variance to the statistics of its inputs over the whole pass, under the
    model's current weights.

    The model runs in training mode from its preprocessing (past an on-device augmentation: the pass
    reads the batches unaugmented) up to its last top-level BatchNorm layer (the head's), so every
    BatchNorm layer sees its inputs as in training (earlier layers normalising with batch
    statistics) and the head's dropout draws no random numbers. With momentum 0 for the pass, each
    layer's moving statistics are its batch's mean and variance after each batch; they are pooled,
    weighted by batch size: mean = E[x], variance = E[x²] − E[x]² over every value of a channel in
    the pass, as one batch of all of them would give.
    """

    def __init__(self, model: keras.Model, images: tf.data.Dataset) -> None:
        self.layers = trainable_batchnorm(model)
        last = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][-1]
        upto = keras.Model(model.get_layer("preprocess").input, last.output)
        self.images = images.take(BN_BATCHES)
        self.batches = int(self.images.cardinality())  # negative when tf.data cannot tell (oversampling)
        self.forward = tf.function(lambda x: upto(x, training=True))  # traced with momentum 0, see run

    def run(self) -> int:
        """Recompute the statistics; return the number of images the pass read."""
        n = 0
        sums = [np.zeros((2, *layer.moving_mean.shape)) for layer in self.layers]  # Σ n·mean, Σ n·E[x²]
        momenta = [layer.momentum for layer in self.layers]
        batches = self.batches if self.batches >= 0 else None
        bar = progress(batches, "BatchNorm statistics", "batch", bar=False, leave=False)  # inside fit's bar
        try:
            for layer in self.layers:
                layer.momentum = 0.0
            for batch in self.images:
                self.forward(batch)
                size = int(batch.shape[0])
                for total, layer in zip(sums, self.layers, strict=True):
                    mean, var = (np.asarray(v.numpy(), np.float64) for v in (layer.moving_mean, layer.moving_variance))
                    total += size * np.stack([mean, var + mean**2])
                n += size
                bar.update()
        finally:
            bar.close()
            for layer, momentum in zip(self.layers, momenta, strict=True):
                layer.momentum = momentum
        for (mean_sum, square_sum), layer in zip(sums, self.layers, strict=True):
            mean = mean_sum / n
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(np.maximum(square_sum / n - mean**2, 0.0).astype(np.float32))
        return n


class SwapEMAWeightsWithBatchNorm(keras.callbacks.SwapEMAWeights):
    """Keras' ``SwapEMAWeights(swap_on_epoch=True)``, plus BatchNorm statistics recomputed for the
    moving-average weights each time they are swapped in for validation.

    Keras swaps the average in at ``on_test_begin`` (validation), back out at ``on_test_end``, in
    again at ``on_epoch_end`` (for the callbacks after this one: the checkpoint) and out at the next
    ``on_epoch_begin``. BatchNorm statistics are not trainable, so they are not swapped: the ones
    recomputed at ``on_test_begin`` stay in place through validation and the epoch's end, until
    training updates them again. ``model.fit`` validates every epoch, so every checkpoint has them.
    """

    def __init__(self, bn_pass: BatchNormPass) -> None:
        super().__init__(swap_on_epoch=True)
        self.bn_pass = bn_pass

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_test_begin(logs)
        start = time.perf_counter()
        n = self.bn_pass.run()
        log.info(
            "BatchNorm statistics of %d layers recomputed for the averaged weights over %d images in %.2f s",
            len(self.bn_pass.layers),
            n,
            time.perf_counter() - start,
        )


class ValidationMacroF1(keras.callbacks.Callback):
    """Puts ``val_macro_f1`` (validation macro-F1 of the model as it stands at the epoch's end: the
    averaged weights when a callback before this one swapped them in) into every epoch's logs, for
    the callbacks after this one."""

    def __init__(self, images: tf.data.Dataset, labels: np.ndarray, n_classes: int) -> None:
        super().__init__()
        self.images, self.labels, self.n_classes = images, labels, n_classes

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        desc = f"epoch {epoch + 1}/{self.params['epochs']} validation macro-F1"
        with progress(len(self.labels), desc, bar=False, leave=False) as bar:  # inside fit's bar
            predicted = self.model.predict(self.images, verbose=0, callbacks=[PredictProgress(bar)]).argmax(axis=1)
        logs["val_macro_f1"] = float(macro_f1(confusion(self.labels, predicted, self.n_classes)))


class LogBatches(keras.callbacks.Callback):
    """``fit``'s batches in a log, where ``verbose=2`` writes one line per epoch (on a terminal Keras'
    bar shows them and this writes nothing): a ``progress`` line at most every ``LOG_INTERVAL``
    seconds while an epoch trains (``epoch e/E: b/B batch (p %), loss …, rate, ETA …``) and while
    it validates over ``validation_steps`` batches."""

    def __init__(self, validation_steps: int) -> None:
        super().__init__()
        self.validation_steps = validation_steps
        self.epoch = 0
        self.bar: Progress | None = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch + 1
        self._start(self.params["steps"], "")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if logs and "loss" in logs:
            self.bar.set_postfix_str(f"loss {float(logs['loss']):.4f}", refresh=False)
        self.bar.update()

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._start(self.validation_steps, " validation")

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.bar.update()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.bar.close()

    def _start(self, steps: int | None, what: str) -> None:
        """Close the bar so far and start one over ``steps`` batches of this epoch's ``what``."""
        if self.bar is not None:
            self.bar.close()
        desc = f"epoch {self.epoch}/{self.params['epochs']}{what}"
        self.bar = progress(steps, desc, "batch", bar=False, leave=False)


class PredictProgress(keras.callbacks.Callback):
    """Counts the images of each batch ``model.predict`` finishes into ``bar``."""

    def __init__(self, bar: Progress) -> None:
        super().__init__()
        self.bar = bar

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.bar.update(len(keras.tree.flatten(logs["outputs"])[0]))
