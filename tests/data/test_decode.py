"""read_image: every input mode becomes RGB uint8, EXIF orientation applied."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.decode import ImageDecodeError, read_image, read_image_size


def _check(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.dtype == np.uint8 and array.shape == (*shape, 3) and array.flags.c_contiguous


def test_rgb_jpeg_and_png(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _check(out, (5, 7))
    np.testing.assert_array_equal(out, pixels)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    expected = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")).astype(int)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - expected).max() <= 2


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_grayscale(tmp_path, suffix):
    Image.fromarray(np.full((4, 6), 77, np.uint8)).save(tmp_path / f"g.{suffix}")
    out = read_image(tmp_path / f"g.{suffix}")
    _check(out, (4, 6))
    assert np.abs(out.astype(int) - 77).max() <= 1


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[...] = (10, 20, 30, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _check(out, (3, 3))
    assert out[0, 0].tolist() == [10, 20, 30]


def test_palette(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    _check(out, (2, 4))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 0, 255]


def test_16bit_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    _check(out, (1, 3))
    assert out[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_exif_orientation(tmp_path, suffix):
    image = Image.new("RGB", (6, 4), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 2, 2))  # blue top-left block
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / f"r.{suffix}", exif=exif, quality=100)
    out = read_image(tmp_path / f"r.{suffix}")
    _check(out, (6, 4))
    assert read_image_size(tmp_path / f"r.{suffix}") == (6, 4)
    assert out[0, -1, 2] > 200 and out[0, -1, 0] < 60  # blue block now top-right
    assert out[-1, 0, 0] > 200


def test_pil_fallback_for_gif(tmp_path):
    Image.new("RGB", (5, 3), (0, 255, 0)).save(tmp_path / "a.gif")
    out = read_image(tmp_path / "a.gif")
    _check(out, (3, 5))
    assert out[1, 1].tolist() == [0, 255, 0]


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found: .*nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match="cannot decode image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        read_image_size(tmp_path / "bad.jpg")
