"""Conversions between model space ([-1, 1] floats) and uint8 pictures, and PNG grids."""

from __future__ import annotations

import os

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats → uint8 as guided-diffusion's sampling script does: round((x + 1)·127.5) clipped."""
    return np.clip(np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
    """Tiles (N, H, W, C) uint8 images into one (rows·(H+p)+p, columns·(W+p)+p, C) picture."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, images.dtype)
    for index, image in enumerate(images):
        r, col = divmod(index, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def save_png(path: str, picture: np.ndarray, scale: int = 1) -> None:
    """Writes an (H, W, C) uint8 picture (C = 1 or 3), nearest-neighbour enlarged ``scale`` times,
    atomically (a temporary file renamed into place, so a crash never leaves half a PNG)."""
    from PIL import Image

    picture = np.asarray(picture)
    if scale > 1:
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[..., 0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".tmp"
    Image.fromarray(picture).save(temporary, format="PNG")
    os.replace(temporary, path)
