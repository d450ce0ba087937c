"""The central box of an image, removed or kept alone: the lungs-removed and lungs-only views of the
shortcut audit. On a frontal chest X-ray the central 60 % × 60 % holds most of both lung fields.

What replaces the removed part: ``black`` (0) where a model is trained on the views themselves (the
``data.occlude`` experiment), ``mean`` (each image's mean grey over the part kept) where a model
trained on whole images is shown them: a black box is unlike anything it saw, and a model facing one
falls back to a single class whatever it learned, so the score would measure that, not the lungs."""

from __future__ import annotations

from typing import Literal

import numpy as np

Fill = Literal["black", "mean"]


def central_box(size: int, fraction: float) -> slice:
    """The rows (and columns) of the centred square whose side is ``fraction`` of ``size`` (rounded)."""
    side = round(size * fraction)
    start = (size - side) // 2
    return slice(start, start + side)


def occlude(images: np.ndarray, fraction: float, fill: Fill = "black") -> np.ndarray:
    """A copy of ``images`` (..., S, S, C) with the central box replaced by ``fill``: the border only."""
    box = np.zeros(images.shape[-3:-1], dtype=bool)
    side = central_box(images.shape[-2], fraction)
    box[side, side] = True
    return _replace(images, box, fill)


def keep_centre(images: np.ndarray, fraction: float, fill: Fill = "black") -> np.ndarray:
    """A copy of ``images`` (..., S, S, C) with everything but the central box replaced by ``fill``."""
    outside = np.ones(images.shape[-3:-1], dtype=bool)
    side = central_box(images.shape[-2], fraction)
    outside[side, side] = False
    return _replace(images, outside, fill)


def _replace(images: np.ndarray, region: np.ndarray, fill: Fill) -> np.ndarray:
    """``images`` with the pixels of ``region`` (S, S) set to 0, or to each image's mean over the rest."""
    out = np.array(images, copy=True)
    if fill == "black" or region.all():
        out[..., region, :] = 0
        return out
    kept = np.asarray(images, dtype=np.float64)[..., ~region, :]  # (..., pixels kept, C)
    mean = kept.mean(axis=-2, keepdims=True)  # per image and channel
    out[..., region, :] = np.round(np.broadcast_to(mean, (*kept.shape[:-2], int(region.sum()), kept.shape[-1])))
    return out
