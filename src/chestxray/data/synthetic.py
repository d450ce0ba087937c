"""Deterministic synthetic chest X-rays laid out like the Kaggle COVID-19 Radiography Database.

The embedded default dataset: every image is drawn from numpy generators seeded by
``(seed, class, number)`` with CPU-independent arithmetic (see ``_AXIS``), so a given
``(n_images, seed)`` gives the same pixels on every CPU, and the same file bytes wherever the
same zlib compresses them (PNG and xlsx are deflate streams).
"""

from __future__ import annotations

import io
import logging
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chestxray.data.radiography import CLASSES, DIR, IMAGES, MASKS, REAL_COUNTS, metadata_file
from chestxray.errors import UserError
from chestxray.progress import track
from chestxray.resources import require_free_space

log = logging.getLogger(__name__)

IMAGE_SIZE = 299
MASK_SIZE = 256
MIN_IMAGES = 40
BYTES_PER_IMAGE = 64_000  # an upper bound: image and mask took 54 KB per image at n_images=1000

_SHEET_PREFIX = {"Normal": "NORMAL"}  # real quirk: the Normal sheet names files NORMAL-<n>
_URLS = {
    "COVID": "https://github.com/ieee8023/covid-chestxray-dataset",
    "Lung_Opacity": "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
    "Normal": "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
    "Viral Pneumonia": "https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia",
}
_ZIP_TIME = (2021, 3, 6, 0, 0, 0)
_XML_TIME = b"2021-03-06T00:00:00Z"
_CORE_TIME = re.compile(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*")

# Pixel centres in -1..1, exact in float64: every pixel value below comes from +, -, *, /, sqrt, floor,
# min/max and comparisons (IEEE correctly rounded, so the same bits on every CPU), applied element by element
# in a fixed order. No transcendental ufunc (exp, tanh, cos, power), no BLAS and no float reduction: their
# SIMD code paths differ between CPUs in the last bit. Random draws are uniform doubles only (exact from the
# generator's integers); NumPy's normal sampler calls libm's exp and log, so normals are sums of uniforms.
_AXIS = (2.0 * np.arange(IMAGE_SIZE) - (IMAGE_SIZE - 1)) / (IMAGE_SIZE - 1)
_X, _Y = np.meshgrid(_AXIS, _AXIS)
_SQRT3 = math.sqrt(3.0)


def _class_counts(n_images: int) -> dict[str, int]:
    """Split ``n_images`` over the classes in the real proportions (largest remainder)."""
    total = sum(REAL_COUNTS.values())
    quotas = [n_images * REAL_COUNTS[c] / total for c in CLASSES]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(CLASSES)), key=lambda i: counts[i] - quotas[i])
    for i in by_remainder[: n_images - sum(counts)]:
        counts[i] += 1
    return dict(zip(CLASSES, counts, strict=True))


def _normal(rng: np.random.Generator, mean: float, sd: float) -> float:
    """Roughly normal draw: the Irwin-Hall sum of four uniforms, scaled to ``sd``."""
    r = rng.random(4)
    return mean + sd * _SQRT3 * (((r[0] + r[1]) + (r[2] + r[3])) - 2.0)


def _normal_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Roughly standard normal array: Irwin-Hall sums of four uniforms, added in a fixed order."""
    r = rng.random((4, *shape))
    return _SQRT3 * (((r[0] + r[1]) + (r[2] + r[3])) - 2.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic-like soft step: quintic smootherstep, slope 1/4 at 0 as the logistic, flat beyond |x| = 3.75."""
    t = np.clip(0.5 + x / 7.5, 0.0, 1.0)
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)


def _gauss(q: np.ndarray) -> np.ndarray:
    """exp(-q) for q >= 0, as (1 - q/8)^8: within 0.02 of it, and exactly 0 beyond q = 8."""
    y = np.maximum(1.0 - q / 8.0, 0.0)
    y = y * y
    y = y * y
    return y * y


def _wave(phase: np.ndarray) -> np.ndarray:
    """cos(2 pi phase) shaped periodic wave: 1 at whole phases, -1 at halves, flat at both."""
    t = np.abs(2.0 * (phase - np.floor(phase)) - 1.0)
    return 2.0 * t * t * (3.0 - 2.0 * t) - 1.0


def _cubic_rows(grid: np.ndarray, size: int) -> np.ndarray:
    """Catmull-Rom upsampling of ``grid`` along axis 0 to ``size`` rows (pixel centres aligned)."""
    n = grid.shape[0]
    pos = (np.arange(size) + 0.5) * (n / size) - 0.5
    i = np.floor(pos).astype(np.int64)
    t = (pos - i)[:, None]
    taps = [grid[np.clip(i + k, 0, n - 1)] for k in (-1, 0, 1, 2)]
    w0 = ((-0.5 * t + 1.0) * t - 0.5) * t
    w1 = (1.5 * t - 2.5) * t * t + 1.0
    w2 = ((-1.5 * t + 2.0) * t + 0.5) * t
    w3 = (0.5 * t - 0.5) * t * t
    return ((w0 * taps[0] + w1 * taps[1]) + w2 * taps[2]) + w3 * taps[3]


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int | None = None) -> np.ndarray:
    """Zero-mean smooth noise: a ``rows`` x ``cols`` normal grid upsampled bicubically to the image."""
    grid = _normal_field(rng, (rows, cols or rows))
    return _cubic_rows(_cubic_rows(grid, IMAGE_SIZE).T, IMAGE_SIZE).T


def _chest_frame(rng: np.random.Generator, paediatric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Chest coordinates (u: left-right, v: top-bottom) with jittered centre, size and tilt."""
    scale = rng.uniform(0.60, 0.74) if paediatric else rng.uniform(0.70, 0.88)
    cx, cy = _normal(rng, 0.0, 0.04), _normal(rng, 0.02, 0.04)
    s = _normal(rng, 0.0, 0.044)  # sine of a slight tilt (sd about 2.5 degrees)
    c = math.sqrt(1.0 - s * s)
    dx, dy = _X - cx, _Y - cy
    u = (c * dx + s * dy) / (scale * rng.uniform(0.92, 1.08))
    v = (-s * dx + c * dy) / scale
    return u, v


def _lungs(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft (0..1) mask of both lung fields: narrow apices, wide bases, smaller left lung."""
    lungs = np.zeros_like(u)
    for side in (-1.0, 1.0):
        cu, top = side * rng.uniform(0.40, 0.46), rng.uniform(-0.78, -0.68)
        height, width = rng.uniform(1.25, 1.40) * (0.92 if side > 0 else 1.0), rng.uniform(0.30, 0.35)
        w = (v - top + 0.12 * side * (u - cu) / width) / height  # 0 at the apex, 1 at the base
        a = width * (0.45 + 0.55 * np.sqrt(np.clip(w, 0.0, 1.0)))
        d = np.square((u - cu) / a) + np.square(np.square(2 * w - 1))
        lungs = np.maximum(lungs, _sigmoid((1.0 - d) / 0.06))
    return lungs


def _anatomy(u: np.ndarray, v: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Body, spine, heart, clavicles and ribs around dark lungs, intensities in ~0..1."""
    au = np.abs(u)
    torso = np.square(np.square(u / rng.uniform(0.95, 1.08))) + np.square(np.square((v - 0.45) / 1.45))
    body = _sigmoid((1.0 - torso) / 0.08)
    neck = _sigmoid((0.22 - au) / 0.03)
    abdomen = body * _sigmoid((v - 0.55) / 0.1)
    img = 0.05 + rng.uniform(0.50, 0.60) * np.maximum(body, neck) + 0.05 * abdomen
    spine = _sigmoid((0.11 - au) / 0.02)
    img += 0.15 * spine
    heart = np.square((u - rng.uniform(0.08, 0.16)) / 0.32) + np.square((v - rng.uniform(0.30, 0.40)) / 0.30)
    img += 0.08 * _sigmoid((1.0 - heart) / 0.15)
    img += 0.08 * _sigmoid((0.03 - np.abs(v + 0.68 + 0.12 * au)) / 0.01) * (au < 0.85)  # clavicles
    ribs = _wave(rng.uniform(4.5, 5.5) * (v + 0.45 * au - 0.5 * u * u) + rng.uniform())
    cage = body * _sigmoid((0.62 - v) / 0.05) * _sigmoid((v + 0.85) / 0.05)
    img += (0.03 + 0.05 * lungs) * cage * (1.0 - spine) * np.square(np.clip(ribs, 0.0, 1.0))
    markings = 0.03 * _smooth_noise(rng, 40) + 0.06 * _sigmoid((0.3 - au) / 0.06)  # vessels, hila
    dark = rng.uniform(0.30, 0.40) * (1.0 - 0.6 * _sigmoid((1.0 - heart) / 0.15))
    return img + lungs * (markings - dark)


def _ridges(noise: np.ndarray) -> np.ndarray:
    """Thin bright lines along the zero crossings of smooth noise."""
    return _gauss(np.square(noise / 0.4))


def _blob(u: np.ndarray, v: np.ndarray, cu: float, cv: float, sigma: float, power: int = 1) -> np.ndarray:
    """Soft round opacity of width ``sigma`` centred at (cu, cv) in chest coordinates (power 2: flatter top)."""
    q = (np.square(u - cu) + np.square(v - cv)) / (2 * sigma * sigma)
    return _gauss(q * q if power == 2 else q)


def _disease(cls: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class signature added inside the lungs (zero for Normal)."""
    out = np.zeros_like(u)
    if cls == "COVID":  # bilateral, peripheral, lower-zone patchy ground glass
        for side in (-1.0, 1.0):
            for _ in range(rng.integers(3, 6)):
                cu, cv = side * rng.uniform(0.55, 0.70), rng.uniform(0.0, 0.45)
                out += rng.uniform(0.14, 0.24) * _blob(u, v, cu, cv, rng.uniform(0.06, 0.11))
        out *= 1.0 + 0.4 * _smooth_noise(rng, 24)
    elif cls == "Lung_Opacity":  # one larger, denser consolidation in one lung
        side = rng.choice((-1.0, 1.0))
        cu, cv = side * rng.uniform(0.35, 0.55), rng.uniform(-0.3, 0.35)
        out += rng.uniform(0.30, 0.45) * _blob(u, v, cu, cv, rng.uniform(0.11, 0.17), power=2)
        out *= 1.0 + 0.25 * _smooth_noise(rng, 20)
    elif cls == "Viral Pneumonia":  # diffuse interstitial, reticular streaks in both lungs
        streaks = _ridges(_smooth_noise(rng, 6, 30)) + 0.6 * _ridges(_smooth_noise(rng, 22))
        out += rng.uniform(0.08, 0.12) * streaks * (0.6 + 0.4 * _sigmoid((0.5 - np.abs(u)) / 0.1)) + 0.04
    return out


def _render(cls: str, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One synthetic radiograph (L, 299x299) and its lung mask (RGB, 256x256, 0/255)."""
    u, v = _chest_frame(rng, paediatric=cls == "Viral Pneumonia")
    lungs = _lungs(u, v, rng)
    img = _anatomy(u, v, lungs, rng) + lungs * _disease(cls, u, v, rng)
    img += 0.05 * _smooth_noise(rng, 6)  # uneven exposure
    img += rng.uniform(0.01, 0.03) * _normal_field(rng, img.shape)
    img = rng.uniform(0.8, 1.2) * (img - 0.35) + 0.35 + _normal(rng, 0.0, 0.05)
    img = np.clip(img, 0.0, 1.0)
    img += rng.uniform(-0.3, 0.3) * img * (1.0 - img)  # a gamma of about 0.8..1.25, monotone
    image = Image.fromarray(np.round(img * 255).astype(np.uint8))
    mask = Image.fromarray(np.where(lungs > 0.5, 255, 0).astype(np.uint8))
    return image, mask.resize((MASK_SIZE, MASK_SIZE), Image.Resampling.NEAREST).convert("RGB")


def _write_metadata(path: Path, cls: str, count: int) -> None:
    """Write the per-class metadata sheet with fixed timestamps (byte-reproducible)."""
    prefix = _SHEET_PREFIX.get(cls, cls)
    frame = pd.DataFrame(
        {
            "FILE NAME": [f"{prefix}-{n}" for n in range(1, count + 1)],
            "FORMAT": "PNG",
            "SIZE": f"{IMAGE_SIZE}*{IMAGE_SIZE}",
            "URL": _URLS[cls],
        }
    )
    buffer = io.BytesIO()
    frame.to_excel(buffer, index=False, engine="openpyxl")
    path.write_bytes(_freeze_zip(buffer.getvalue()))


def _freeze_zip(data: bytes) -> bytes:
    """Rewrite an xlsx with fixed entry times and fixed created/modified document properties."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for entry in src.infolist():
            content = src.read(entry)
            if entry.filename == "docProps/core.xml":
                content = _CORE_TIME.sub(rb"\g<1>" + _XML_TIME, content)
            info = zipfile.ZipInfo(entry.filename, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, content)
    return out.getvalue()


def _readme(seed: int, counts: dict[str, int]) -> str:
    """README.md.txt text stating that the data are synthetic."""
    lines = "\n".join(f"-{counts[c]} {c} images" for c in CLASSES)
    return (
        "*****SYNTHETIC COVID-19 CHEST X-RAY DATABASE (NOT REAL DATA)\n\n"
        "Every image and mask in this folder is SYNTHETIC, generated by the chestxray package\n"
        f"(chestxray.data.synthetic) with seed {seed}. No patient data. Not for any clinical use.\n"
        "It mimics the layout of the Kaggle COVID-19 Radiography Database\n"
        "(tawsifurrahman/covid19-radiography-database): <Class>/images/<Class>-<n>.png,\n"
        "<Class>/masks/<Class>-<n>.png and <Class>.metadata.xlsx, with class shares of the\n"
        "real 3616 COVID / 6012 Lung_Opacity / 10192 Normal / 1345 Viral Pneumonia.\n\n"
        f"***Counts ({sum(counts.values())} images):\n{lines}\n\n"
        f"***Formats\n    - PNG, 8-bit grayscale, {IMAGE_SIZE}*{IMAGE_SIZE} pixels; "
        f"masks RGB {MASK_SIZE}*{MASK_SIZE}, values 0/255.\n"
    )


def generate(root: Path, n_images: int, seed: int) -> dict[str, int]:
    """Write the synthetic dataset under root/COVID-19_Radiography_Dataset; return images per class."""
    if n_images < MIN_IMAGES:
        raise UserError(f"params.yaml: data.synthetic.n_images must be at least {MIN_IMAGES}, got {n_images}")
    require_free_space(
        root,
        n_images * BYTES_PER_IMAGE,
        f"generating {n_images} synthetic images",
        "lower data.synthetic.n_images or free space",
    )
    counts = _class_counts(n_images)
    base = Path(root) / DIR
    for cls in CLASSES:
        (base / cls / IMAGES).mkdir(parents=True)
        (base / cls / MASKS).mkdir(parents=True)
        _write_metadata(base / metadata_file(cls), cls, counts[cls])
    jobs = [(k, cls, n) for k, cls in enumerate(CLASSES) for n in range(1, counts[cls] + 1)]
    for k, cls, n in track(jobs, len(jobs), "synthetic X-rays"):
        image, mask = _render(cls, np.random.default_rng([seed, k, n]))
        image.save(base / cls / IMAGES / f"{cls}-{n}.png")
        mask.save(base / cls / MASKS / f"{cls}-{n}.png")
    (base / "README.md.txt").write_text(_readme(seed, counts), encoding="utf-8", newline="\n")
    log.info("Wrote %d synthetic images under %s: %s", n_images, base, counts)
    return counts
