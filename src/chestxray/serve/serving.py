"""The model as users get it: an MLflow pyfunc around the Keras model, its classes and its
operating point. ``mlflow models serve``, the predict command and the web page all call it.

Served, it takes a DataFrame with one column ``image``: each value an image file (PNG, JPEG, …)
encoded as base64. It returns one row per image: ``p_<class>`` probabilities and ``predicted``,
the class at the operating point (COVID when its probability reaches the threshold chosen on
validation, else the most probable other class: ``serve.decision``), ``trained_on`` (the data it
was trained on, ``serve.provenance``) and ``warning`` (``synthetic data: not meaningful on real X-rays``
for a model trained on synthetic data, else empty). The model also carries what that rule gave on
the test split (``served_rule``), so every place that serves it can say so.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image, UnidentifiedImageError

import chestxray
from chestxray.data.images import load_gray
from chestxray.errors import UserError
from chestxray.serve import provenance
from chestxray.serve.decision import decide
from chestxray.tasks import COVID
from chestxray.tracking import delete_logged_model, logged_model_ids, tracking_uri

INPUT_COLUMN = "image"
# What the model's code imports, pinned to the versions installed where it was logged.
REQUIREMENTS = ("keras", "numpy", "pandas", "pillow", "imagehash", "scipy", "pyyaml", "tqdm", "matplotlib")
TENSORFLOW = ("tensorflow-cpu", "tensorflow")  # whichever build is installed
# What the model carries of evaluate's operating point besides the threshold: the test figures of the rule it serves.
SERVED_FIGURES = (
    "rule",
    "target_sensitivity",
    "target_met",
    "sensitivity",
    "specificity",
    "positives",
    "negatives",
    "ci",
)

log = logging.getLogger(__name__)


def decode(data: bytes, size: int, name: str) -> np.ndarray:
    """An image file's bytes → (size, size) uint8 grey, as in training; UserError naming ``name``."""
    try:
        return load_gray(io.BytesIO(data), size)
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image file that can be read (PNG, JPEG, BMP, TIFF, …)") from None
    except Image.DecompressionBombError:
        raise UserError(f"{name}: too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UserError(f"{name}: corrupt or truncated image ({exc})") from None


def from_base64(value: Any, name: str) -> bytes:
    """The bytes of a base64 text; UserError naming ``name`` if it is not base64."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise UserError(f"{name}: not valid base64 ({exc})") from None


class XrayClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc model: the Keras model (artifact ``keras_model``) and its classes, input size,
    threshold, the test figures at it and the data it was trained on (artifact ``settings``, a JSON
    file; see ``log_model``)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras

        import chestxray.learn.models  # noqa: F401  (registers the custom layers and the focal loss)

        self.keras_model = keras.models.load_model(context.artifacts["keras_model"], compile=False)
        settings = json.loads(Path(context.artifacts["settings"]).read_text(encoding="utf-8"))
        self.classes: list[str] = list(settings["classes"])
        self.image_size: int = int(settings["image_size"])
        self.threshold: float = float(settings["threshold"])
        # SERVED_FIGURES; None for a model logged before they travelled with it
        self.operating_point: dict[str, Any] | None = settings.get("operating_point")
        # serve.provenance.training_data; all unknown for a model logged before it travelled with it
        self.data: dict[str, Any] = settings.get("data", provenance.training_data(None, None, None))

    def served_rule(self) -> str | None:
        """The decision rule and its test figures in one line (None when the model has no figures)."""
        return None if self.operating_point is None else rule_line(self.threshold, self.operating_point)

    def trained_on(self) -> str:
        """The data the model was trained on, in one line (``serve.provenance.trained_on``)."""
        return provenance.trained_on(self.data)

    def warning(self) -> str:
        """``synthetic data: not meaningful on real X-rays`` for a model trained on synthetic data, else empty."""
        return provenance.warning(self.data)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Base64 image files in column ``image`` → probabilities, predicted class, trained_on and warning per row."""
        images = []
        for i, value in enumerate(model_input[INPUT_COLUMN]):
            try:
                images.append(decode(from_base64(value, f"row {i}"), self.image_size, f"row {i}"))
            except UserError as exc:
                raise MlflowException.invalid_parameter_value(
                    f"{exc}; send each image file base64-encoded in column '{INPUT_COLUMN}'"
                ) from None
        return self.predict_images(np.stack(images))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 grey images → (N, k) float64 probabilities, rows summing to 1."""
        from chestxray.learn.models import predict_proba

        return predict_proba(self.keras_model, np.asarray(images)[..., None])

    def predict_images(self, images: np.ndarray) -> pd.DataFrame:
        """(N, S, S) uint8 grey images → ``p_<class>`` columns, ``predicted``, ``trained_on`` and ``warning``."""
        prob = self.probabilities(images)
        table = pd.DataFrame(prob, columns=[f"p_{c}" for c in self.classes])
        table["predicted"] = np.asarray(self.classes)[decide(prob, self.classes, self.threshold)]
        return table.assign(trained_on=self.trained_on(), warning=self.warning())


def signature(classes: Sequence[str]) -> ModelSignature:
    """Input: a string column ``image``; output: a double per class, the predicted class, the data the
    model was trained on and the warning (strings)."""
    outputs = [ColSpec("double", f"p_{c}") for c in classes]
    outputs += [ColSpec("string", name) for name in ("predicted", "trained_on", "warning")]
    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]), outputs=Schema(outputs))


def _figure(value: float | None, ci: Mapping[str, float | None]) -> str:
    """``0.924 [0.901, 0.943]``, or ``n/a`` when undefined (no such test images)."""
    if value is None or ci["low"] is None or ci["high"] is None:
        return "n/a"
    return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def rule_line(threshold: float, figures: Mapping[str, Any]) -> str:
    """The served rule and what it gave on the test split, from an operating point's ``SERVED_FIGURES``."""
    caveat = "" if figures["target_met"] else " (not certified: too few validation COVID images)"
    sensitivity = _figure(figures["sensitivity"], figures["ci"]["sensitivity"])
    specificity = _figure(figures["specificity"], figures["ci"]["specificity"])
    return (
        f"At p({COVID}) ≥ {threshold:.3f}: test sensitivity {sensitivity}, specificity {specificity}"
        f" (exact 95 % intervals; {figures['positives']:,} {COVID} and {figures['negatives']:,} other test images)."
        f" Threshold chosen on validation by the {figures['rule']} rule for sensitivity"
        f" {figures['target_sensitivity']}{caveat}."
    )


def log_model(keras_file: Path, classes: Sequence[str], image_size: int, operating_point: Mapping[str, Any]) -> None:
    """Log the pyfunc model as ``model`` in the active run, with the package's code, so it is
    served and loaded with no checkout of this repository. ``operating_point`` is evaluate's
    (``judge.operating_point``): the model applies its threshold and carries its ``SERVED_FIGURES``.
    It also carries what it was trained on (``data``: ``serve.provenance.training_data``), from the
    run's tags that training sets (``data.source``, ``data.slug`` or ``data.name``, ``data_version``).
    The classes, size, threshold, figures and data travel as a JSON artifact, not as MLflow's
    ``model_config``, which MLflow also logs as run params: a run evaluated again with a new
    threshold would keep the old one there (params cannot change). If logging fails or is
    interrupted, the logged model it created is deleted before the error goes on, so no half-logged
    model is left to register."""
    run_id = mlflow.active_run().info.run_id
    tags = mlflow.get_run(run_id).data.tags
    settings = {
        "classes": list(classes),
        "image_size": int(image_size),
        "threshold": float(operating_point["threshold"]),
        "operating_point": {key: operating_point[key] for key in SERVED_FIGURES},
        "data": provenance.training_data(
            tags.get("data.source"), tags.get("data.slug") or tags.get("data.name"), tags.get("data_version")
        ),
    }
    before = {model_id for model_id, _ in logged_model_ids(run_id)}
    try:
        _log_pyfunc(keras_file, settings)
    except BaseException:
        for model_id, status in logged_model_ids(run_id):
            if model_id not in before:
                log.warning("deleting the %s model %s that failed to log", status, model_id)
                delete_logged_model(model_id)
        raise


def _log_pyfunc(keras_file: Path, settings: Mapping[str, Any]) -> None:
    """``mlflow.pyfunc.log_model`` of the classifier as ``model``, with ``settings`` as its JSON
    artifact (see ``log_model``)."""
    classes, image_size = settings["classes"], settings["image_size"]
    with tempfile.TemporaryDirectory(prefix="model-settings-") as tmp:
        settings_json = Path(tmp) / "settings.json"
        settings_json.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        mlflow.pyfunc.log_model(
            name="model",
            python_model=XrayClassifier(),
            artifacts={"keras_model": str(keras_file), "settings": str(settings_json)},
            code_paths=[str(Path(chestxray.__file__).parent)],
            signature=signature(classes),
            input_example=pd.DataFrame({INPUT_COLUMN: [_example_image(image_size)]}),
            pip_requirements=_pins(),
        )


def _example_image(size: int) -> str:
    """A grey PNG as base64: the request example MLflow stores beside the model."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _pins() -> list[str]:
    """``name==version`` for REQUIREMENTS and the installed TensorFlow build."""
    installed = {name: _version(name) for name in (*REQUIREMENTS, *TENSORFLOW)}
    tensorflow = next(name for name in TENSORFLOW if installed[name])
    return [f"{name}=={installed[name]}" for name in (*REQUIREMENTS, tensorflow)]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load(uri: str) -> XrayClassifier:
    """Load the pyfunc model at ``uri`` (``models:/name@alias``, ``runs:/id/model``, a path)
    from the project's MLflow store."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except (MlflowException, OSError) as exc:
        raise UserError(
            f"cannot load the model {uri} from {tracking_uri()} ({str(exc).splitlines()[0]}); run `dvc repro`"
            " (its compare stage registers the champion) or pass --model with a runs:/<run id>/model URI"
        ) from None
