"""What `dlrun predict` accepts as inputs, and the clear errors for everything else."""

from __future__ import annotations

import numpy as np
import pytest

from dlrun.data.inputs import load_inputs
from dlrun.errors import DataError

IMAGE = (28, 28, 1)


def _npz(tmp_path, **arrays):
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    return path


def test_one_sample_and_a_batch_are_accepted(tmp_path):
    x, scale = load_inputs(_npz(tmp_path, x=np.zeros(IMAGE, np.uint8)), IMAGE)
    assert x.shape == (1, *IMAGE) and scale == pytest.approx(1 / 255)
    x, scale = load_inputs(_npz(tmp_path, x=np.zeros((5, *IMAGE), np.float32)), IMAGE)
    assert x.shape == (5, *IMAGE) and scale is None


def test_the_missing_channel_axis_is_added(tmp_path):
    x, _ = load_inputs(_npz(tmp_path, x=np.ones((3, 28, 28), np.uint8)), IMAGE)
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.uint8
    with pytest.raises(DataError, match=r"shape \[28, 27\]"):
        load_inputs(_npz(tmp_path, x=np.ones((3, 28, 27), np.uint8)), IMAGE)


def test_an_npz_without_x_names_what_it_holds(tmp_path):
    with pytest.raises(DataError, match=r"no array 'x' \(it holds: images, labels\)"):
        load_inputs(_npz(tmp_path, images=np.zeros((2, 4)), labels=np.zeros(2)), (4,))
    with pytest.raises(DataError, match="no array 'x'"):
        load_inputs(_npz(tmp_path, only=np.zeros((2, 4))), (4,))


@pytest.mark.parametrize(
    ("x", "needle"),
    [
        (np.zeros((0, 4), np.float32), "holds no samples"),
        (np.array([[1.0, np.nan, 0, 0]], np.float32), "1 NaN or infinite"),
        (np.array([[1.0, np.inf, -np.inf, 0]]), "2 NaN or infinite"),
        (np.zeros((2, 4), np.complex64), "complex64 inputs"),
    ],
)
def test_bad_values_are_refused(tmp_path, x, needle):
    with pytest.raises(DataError, match=needle):
        load_inputs(_npz(tmp_path, x=x), (4,))


def test_images_are_converted_and_size_checked(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    path = tmp_path / "shoe.png"
    image_mod.new("RGB", (28, 28), (255, 0, 0)).save(path)
    x, scale = load_inputs(path, IMAGE)
    assert x.shape == (1, *IMAGE) and x.dtype == np.uint8 and scale == pytest.approx(1 / 255)
    image_mod.new("RGB", (40, 30)).save(path)
    with pytest.raises(DataError, match=r"resize the image to 28x28") as err:
        load_inputs(path, IMAGE)
    assert "[30, 40, 1]" in err.value.message


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    image_mod = pytest.importorskip("PIL.Image")
    path = tmp_path / "bomb.png"
    image_mod.new("L", (300, 300)).save(path)
    monkeypatch.setattr(image_mod, "MAX_IMAGE_PIXELS", 100)  # the same check as for a real 40k x 40k PNG
    with pytest.raises(DataError, match="refused"):
        load_inputs(path, IMAGE)
