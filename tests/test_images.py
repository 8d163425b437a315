"""Every bad-file kind named in the issues, made here, and what each gets."""
import numpy as np
import pytest
from PIL import Image

from fixtures import bomb_png, png_bytes
from noisystudent.images import BadImage, load_image, scan


@pytest.fixture
def rng_image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    "kind, make, reason",
    [
        ("zero bytes", lambda d, im: b"", "empty file"),
        ("text named .jpg", lambda d, im: b"hello, I am not an image\n" * 10, "not an image"),
        ("png cut in half", lambda d, im: png_bytes(im)[: len(png_bytes(im)) // 2], "truncated or corrupt"),
        # 72 M pixels: above data.max_pixels (64 M), below PIL's own bomb limit (~89 M), so only
        # the project's check can refuse it (a 10^10-pixel header was refused by PIL anyway)
        ("decompression bomb", lambda d, im: bomb_png(9_000, 8_000), "too large to decode safely: 9000x8000 = 72000000 pixels > 64000000"),
    ],
)
def test_unusable_files_are_refused_with_a_reason(tmp_path, rng_image, kind, make, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(make(tmp_path, rng_image))
    with pytest.raises(BadImage, match=reason):
        load_image(p)


def test_jpeg_cut_in_half(tmp_path, rng_image):
    full = tmp_path / "full.jpg"
    rng_image.save(full, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(BadImage, match="truncated or corrupt"):
        load_image(cut)
    assert load_image(full).size == (64, 64)


def test_convertible_modes(tmp_path, rng_image):
    cases = {
        "cmyk.jpg": rng_image.convert("CMYK"),
        "rgba.png": rng_image.convert("RGBA"),
        "palette.png": rng_image.convert("P"),
        "la.png": rng_image.convert("LA"),
        "onebit.png": rng_image.convert("1"),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        for mode in ("RGB", "L"):
            out = load_image(tmp_path / name, mode)
            assert out.mode == mode and out.size == (64, 64), name


def test_sixteen_bit_keeps_its_scale(tmp_path):
    a = np.full((8, 8), 65535, dtype=np.uint16)
    a[0, 0] = 0
    Image.fromarray(a).save(tmp_path / "deep.png")
    out = np.asarray(load_image(tmp_path / "deep.png", "L"))
    assert out.max() == 255 and out[0, 0] == 0


def test_transparent_pixels_become_black(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    im.save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png")).max() == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_scan_reports_reason_and_own_mode_in_order(tmp_path, rng_image, workers):
    rng_image.save(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("CMYK", (5, 5)).save(tmp_path / "cmyk.jpg")
    paths = [tmp_path / "ok.png", tmp_path / "empty.png", tmp_path / "cmyk.jpg"] * 50  # several batches
    out = scan(paths, workers=workers)
    assert out[:3] == [("", rng_image.mode), ("empty file (0 bytes)", ""), ("", "CMYK")]
    assert out == out[:3] * 50


def test_the_pixel_limit_is_the_projects_own(tmp_path):
    """The 72 M-pixel header passes PIL's limit: with data.max_pixels raised above it, it is no
    longer refused as too large (it fails later, as the 1x1 file it really is)."""
    from PIL import Image as PILImage

    assert 9_000 * 8_000 < PILImage.MAX_IMAGE_PIXELS
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png(9_000, 8_000))
    with pytest.raises(BadImage) as e:
        load_image(p, max_pixels=100_000_000)
    assert "too large" not in str(e.value)
