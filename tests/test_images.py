import numpy as np
from PIL import Image

from jdiff.images import make_grid, save_png, to_uint8


def test_to_uint8_matches_guided_diffusion_rounding():
    x = np.array([-1.0, -0.99999, 0.0, 0.5, 1.0, 1.7, -3.0])
    expected = np.clip(((x + 1) * 127.5).round(), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(x), expected)


def test_grid_layout_and_png(tmp_path):
    images = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(5)])
    grid = make_grid(images, columns=3, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 1 and grid[4, 1, 0] == 3
    assert grid[0, 0, 0] == 255  # padding
    path = str(tmp_path / "g.png")
    save_png(path, grid, scale=2)
    loaded = np.asarray(Image.open(path))
    assert loaded.shape == (grid.shape[0] * 2, grid.shape[1] * 2)
    np.testing.assert_array_equal(loaded[::2, ::2], grid[..., 0])
