import numpy as np
import torch

from pagoda.image_util import from_uint8, make_grid, to_uint8


def test_uint8_round_trip_and_clamping():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2).repeat(1, 3, 1, 1)
    arr = to_uint8(x)
    assert arr.shape == (1, 2, 2, 3) and arr.dtype == np.uint8
    assert arr[0, :, :, 0].tolist() == [[0, 128], [255, 255]]
    back = from_uint8(arr)
    assert torch.allclose(back[0, 0], torch.tensor([[-1.0, 1 / 255], [1.0, 1.0]]), atol=1e-6)


def test_grid_places_tiles_row_major():
    imgs = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 20, 30)])
    grid = make_grid(imgs, ncols=2, pad=1)
    assert grid.shape == (7, 7, 3)
    assert grid[1, 1, 0] == 10 and grid[1, 4, 0] == 20 and grid[4, 1, 0] == 30 and grid[4, 4, 0] == 0
    assert grid[0, :, 0].sum() == 0  # padding stays black
