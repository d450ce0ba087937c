"""The central box of an image, blacked out or kept alone: the lungs-removed and lungs-only views of
the shortcut audit. On a frontal chest X-ray the central 60 % × 60 % holds most of both lung fields."""

from __future__ import annotations

import numpy as np


def central_box(size: int, fraction: float) -> slice:
    """The rows (and columns) of the centred square whose side is ``fraction`` of ``size`` (rounded)."""
    side = round(size * fraction)
    start = (size - side) // 2
    return slice(start, start + side)


def occlude(images: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of ``images`` (..., S, S, C) with the central box set to 0 (black): what is left is the border."""
    out = np.array(images, copy=True)
    box = central_box(out.shape[-2], fraction)
    out[..., box, box, :] = 0
    return out


def keep_centre(images: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of ``images`` (..., S, S, C) with everything but the central box set to 0: the lungs only."""
    box = central_box(images.shape[-2], fraction)
    out = np.zeros_like(images)
    out[..., box, box, :] = images[..., box, box, :]
    return out
