"""Lung masks (the Radiography layout's ``<Class>/masks/``, the synthetic default's): read at the size the
model sees, so they line up with the cached images pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from chestxray.data.images import resized, to_gray
from chestxray.errors import UserError


def load_mask(path: Path, size: int) -> np.ndarray:
    """The lung mask in ``path`` as (size, size) bool: True inside the lungs.

    Any mode is read as grey and split at half its brightest value, so 0/255 masks (the Radiography
    Database's RGB ones) and 0/1 masks alike. A mask covers the whole image, as the image does, so it
    is then resized as the image cache resizes images (bilinear with antialiasing, whatever its own
    size) and a pixel is lung when more than half of it was.
    """
    try:
        with Image.open(path) as im:
            grey = np.asarray(to_gray(im))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read this lung mask ({exc}); replace the file or remove it") from None
    return resized(Image.fromarray(np.where(grey > grey.max() / 2, 255, 0).astype(np.uint8)), size) > 127
