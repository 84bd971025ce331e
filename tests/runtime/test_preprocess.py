"""Input image handling of ort3d-run: refusals, odd formats, recentring, the final tensor."""

import numpy as np
import pytest
import torch
from PIL import Image

from image_files import png_header_only
from ort3d.runtime.preprocess import (
    InputError,
    flatten_on_white,
    load_image,
    preprocess,
    recenter,
    rembg_model_candidates,
)


def expect_input_error(path, match, **kwargs):
    with pytest.raises(InputError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert match in message, message
    return message


# ----------------------------------------------------------------------------- refusals

def test_missing_file_directory_and_empty_file(tmp_path):
    expect_input_error(tmp_path / "nope.png", "no such file")
    expect_input_error(tmp_path, "is a directory")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    expect_input_error(empty, "empty (0 bytes)")


def test_text_file_named_png(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    expect_input_error(fake, "not an image file")


def test_truncated_png_is_refused_on_full_decode(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(noise).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect_input_error(cut, "corrupt or truncated")


def test_huge_header_refused_before_decoding(tmp_path):
    # 30000² = 900 MP: Pillow's own bomb guard fires in Image.open, before any allocation.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))
    expect_input_error(bomb, "image too large")
    # 9000×16 passes Pillow's guard; our side limit refuses it from the header. Decoding would
    # have failed differently (the IDAT holds 16 bytes), so the size check ran first.
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_header_only(9000, 16))
    message = expect_input_error(wide, "image too large")
    assert "9000x16" in message
    # A lowered pixel limit refuses by area as well.
    expect_input_error(wide, "image too large", max_side=10000, max_pixels=100_000)


def test_too_small_images(tmp_path):
    for size in [(1, 1), (7, 20)]:
        path = tmp_path / f"small_{size[0]}x{size[1]}.png"
        Image.new("RGB", size, (10, 20, 30)).save(path)
        message = expect_input_error(path, "image too small")
        assert f"{size[0]}x{size[1]}" in message


def test_fully_transparent_image_has_no_object(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(path)
    with pytest.raises(InputError, match="mask is empty") as info:
        preprocess(path, 16)
    assert str(path) in str(info.value)


def test_rembg_request_without_package_or_model(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (90, 90, 90)).save(path)
    with pytest.raises(InputError) as info:
        preprocess(path, 16, rembg_model="u2net")
    message = str(info.value)
    try:
        import rembg  # noqa: F401
        assert str(tmp_path / "models" / "u2net.onnx") in message and "not found" in message
    except ImportError:
        assert "pip install rembg" in message
    assert not (tmp_path / "models").exists()  # nothing was downloaded or created
    with pytest.raises(InputError, match="model name"):
        preprocess(path, 16, rembg_model="../../etc/passwd")


def test_rembg_model_locations_follow_its_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2"))
    assert rembg_model_candidates("u2net") == [
        tmp_path / "u2" / "models" / "u2net" / "u2net.onnx", tmp_path / "u2" / "u2net.onnx"]
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("REMBG_HOME", raising=False)
    assert rembg_model_candidates("silueta") == [
        tmp_path / "xdg" / "rembg" / "models" / "silueta" / "silueta.onnx",
        tmp_path / "xdg" / ".u2net" / "silueta.onnx"]


# ----------------------------------------------------------------------------- odd formats

RAMP_16 = np.array([0, 128, 129, 25700, 65535, 300, 1000, 40000], dtype=np.uint16)
# round(v·255/65535); clipping (Pillow's convert) would give 128, 129, 255, ... instead.
RAMP_8 = np.array([0, 0, 1, 100, 255, 1, 4, 156], dtype=np.uint8)


@pytest.mark.parametrize("mode,suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_16_bit_gray_scaled_not_clipped(tmp_path, mode, suffix):
    ramp = np.tile(RAMP_16, (8, 1))
    if mode == "I":
        img = Image.fromarray(ramp.astype(np.int32))
    else:
        img = Image.frombytes(mode, (8, 8), ramp.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    path = tmp_path / f"ramp{suffix}"
    img.save(path)
    assert Image.open(path).mode == mode
    rgba, had_alpha = load_image(path)
    assert rgba.dtype == np.uint8 and rgba.shape == (8, 8, 4) and not had_alpha
    for channel in range(3):
        np.testing.assert_array_equal(rgba[0, :, channel], RAMP_8)
    assert (rgba[..., 3] == 255).all()


def test_gray_and_gray_alpha(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    rgba, had_alpha = load_image(tmp_path / "l.png")
    assert not had_alpha
    np.testing.assert_array_equal(rgba[..., :3], np.repeat(gray[..., None], 3, axis=-1))
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:, :4] = 0
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    rgba, had_alpha = load_image(tmp_path / "la.png")
    assert had_alpha
    np.testing.assert_array_equal(rgba[..., 3], alpha)
    np.testing.assert_array_equal(rgba[..., 0], gray)


def test_palette_with_and_without_transparency(tmp_path):
    indices = np.zeros((8, 8), np.uint8)
    indices[2:6, 2:6] = 1
    img = Image.fromarray(indices, "P")
    img.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    img.save(tmp_path / "p.png")
    rgba, had_alpha = load_image(tmp_path / "p.png")
    assert not had_alpha
    assert tuple(rgba[3, 3]) == (200, 30, 40, 255) and tuple(rgba[0, 0]) == (0, 0, 0, 255)
    img.save(tmp_path / "p_t.png", transparency=0)
    rgba, had_alpha = load_image(tmp_path / "p_t.png")
    assert had_alpha
    assert tuple(rgba[3, 3]) == (200, 30, 40, 255) and rgba[0, 0, 3] == 0
    np.testing.assert_array_equal(rgba[..., 3] > 0, indices == 1)


def test_cmyk(tmp_path):
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[:, 4:, 0] = 255  # right half pure cyan ink
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    rgba, _ = load_image(tmp_path / "c.tif")
    assert tuple(rgba[0, 0]) == (255, 255, 255, 255) and tuple(rgba[0, 7]) == (0, 255, 255, 255)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    rgba, _ = load_image(tmp_path / "c.jpg")
    # JPEG is lossy: the two halves only need to keep their colours within a few levels.
    assert np.abs(rgba[2, 1, :3].astype(int) - 255).max() <= 6
    assert rgba[2, 6, 0] <= 6 and rgba[2, 6, 1] >= 249


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_6_rotates_clockwise(tmp_path, suffix):
    stored = np.zeros((8, 16, 3), np.uint8)   # 16 wide, 8 tall as stored
    stored[:, :8] = (255, 0, 0)               # stored left half red
    stored[:, 8:] = (0, 0, 255)               # stored right half blue
    exif = Image.Exif()
    exif[0x0112] = 6                          # "rotate 90° clockwise to display"
    path = tmp_path / f"rotated{suffix}"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    rgba, _ = load_image(path)
    assert rgba.shape == (16, 8, 4)
    # Turning clockwise brings the stored left edge to the top: red on top, blue below.
    # (JPEG: compare away from the colour edge, within compression error.)
    assert rgba[2, 4, 0] > 230 and rgba[2, 4, 2] < 25
    assert rgba[13, 4, 2] > 230 and rgba[13, 4, 0] < 25


# ----------------------------------------------------------------------------- recenter

def test_recenter_hand_computed_upscale_case():
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[1:4, 1:4] = [[[10, 20, 30, 255]] * 3] * 3
    rgba[1, 1] = (200, 100, 50, 255)
    rgba[1, 2] = (1, 2, 3, 128)
    # The box excludes the last masked row and column: crop = rows 1..2, cols 1..2 (2×2).
    # size 5, desired int(5·0.8) = 4, scale 2: OpenCV's area rule at an exact 2× is replication,
    # pasted at ((5−4)//2, (5−4)//2) = (0, 0); row 4 and column 4 stay transparent.
    out = recenter(rgba, rgba[..., 3] > 0)
    crop = rgba[1:3, 1:3]
    expected = np.zeros((5, 5, 4), np.uint8)
    expected[:4, :4] = crop.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(out, expected)


def test_recenter_non_square_into_centred_square():
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 255
    out = recenter(rgba, rgba[..., 3] > 0)
    # size 40, box 19×39 (last row/col excluded), scale 32/39 -> 15×32 at row 12, col 4.
    assert out.shape == (40, 40, 4)
    assert (out[:12, :, 3] == 0).all() and (out[27:, :, 3] == 0).all()
    assert (out[:, :4, 3] == 0).all() and (out[:, 36:, 3] == 0).all()
    inside = out[12:27, 4:36].astype(int)
    # A flat colour may lose one level where OpenCV's float32 weights sum just below 1 (Q15).
    assert (np.abs(inside - [200, 100, 50, 255]) <= 1).all()
    assert (inside[..., 3] >= 254).all()


def test_recenter_rejects_thin_object():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[5, 2:14, 3] = 255   # one row: box height 0
    with pytest.raises(InputError, match="too thin"):
        recenter(rgba, rgba[..., 3] > 0, source="line.png")


def test_recenter_matches_kiui_with_cv2():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (dev extra) not installed")
    rng = np.random.default_rng(3)
    for height, width in [(48, 64), (97, 61), (30, 30)]:
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        mask = np.zeros((height, width), bool)
        mask[height // 5: height - 3, width // 7: width // 2 + 9] = True
        expected = _kiui_recenter(cv2, rgba, mask)
        np.testing.assert_array_equal(recenter(rgba, mask), expected)


def _kiui_recenter(cv2, image, mask, border_ratio=0.2):
    """kiui.op.recenter (kiui 0.3.5) for uint8 RGBA, written out here as the test's oracle."""
    image = image.astype(np.float32) / 255
    height, width, channels = image.shape
    size = max(height, width)
    result = np.zeros((size, size, channels), dtype=np.float32)
    coords = np.nonzero(mask)
    x_min, x_max = coords[0].min(), coords[0].max()
    y_min, y_max = coords[1].min(), coords[1].max()
    h, w = x_max - x_min, y_max - y_min
    scale = int(size * (1 - border_ratio)) / max(h, w)
    h2, w2 = int(h * scale), int(w * scale)
    x2, y2 = (size - h2) // 2, (size - w2) // 2
    result[x2:x2 + h2, y2:y2 + w2] = cv2.resize(image[x_min:x_max, y_min:y_max], (w2, h2),
                                                interpolation=cv2.INTER_AREA)
    return (result * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- whole preprocess

def test_preprocess_alpha_image_white_background_and_range(tmp_path):
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[8:24, 12:36] = (0, 0, 0, 255)       # opaque black object
    rgba[8:24, 12] = (0, 0, 0, 128)          # half-transparent left edge
    path = tmp_path / "object.png"
    Image.fromarray(rgba, "RGBA").save(path)
    result = preprocess(path, image_size=48)
    assert result.background == "alpha" and result.notes
    x = result.image
    assert x.shape == (1, 3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # Transparent canvas -> white (+1); the opaque black object -> −1 in the centre.
    assert torch.equal(x[0, :, 0, 0], torch.ones(3))
    assert torch.equal(x[0, :, 24, 24], -torch.ones(3))
    # The views grid's input image is (x + 1)/2, the uint8 one the same picture truncated.
    assert torch.equal(result.input_image, (x[0] + 1) / 2)
    np.testing.assert_allclose(result.input_rgb_uint8 / 255,
                               ((x[0].permute(1, 2, 0).numpy() + 1) / 2), atol=1 / 255)


def test_preprocess_semi_transparent_colour_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[1:7, 1:7] = (200, 100, 0, 128)      # box 5×5 -> scaled to 8×8 at (1, 1)
    path = tmp_path / "glass.png"
    Image.fromarray(rgba, "RGBA").save(path)
    result = preprocess(path, image_size=10)
    a = 128 / 255
    expected = (np.array([200, 100, 0]) / 255 * a + (1 - a)) * 2 - 1
    # Tolerance: recentring interpolates then truncates to uint8, one level = 2/255 in x.
    np.testing.assert_allclose(result.image[0, :, 5, 5].numpy(), expected, atol=2 / 255)


def test_preprocess_opaque_photo_is_taken_whole_and_resized(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(path)
    result = preprocess(path, image_size=16)
    assert result.background == "none"
    assert any("whole image" in note for note in result.notes)
    assert result.input_rgb_uint8.shape == (30, 30, 3)
    # docs/inference.md#preprocessing steps 3-5 written out: recentre, float32 white composite,
    # x = rgb·2 − 1, bilinear resize (align_corners=False, no antialias).
    rgba, had_alpha = load_image(path)
    assert not had_alpha
    square = recenter(rgba, rgba[..., 3] > 0).astype(np.float32) / 255
    rgb = square[..., :3] * square[..., 3:] + (1 - square[..., 3:])
    assert (rgb[0] == 1).all()                                # border is white
    np.testing.assert_array_equal(result.input_rgb_uint8, (rgb * 255).astype(np.uint8))
    x = torch.from_numpy(rgb * 2 - 1).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear",
                                               align_corners=False, antialias=False)
    torch.testing.assert_close(result.image, expected, rtol=0, atol=0)


def test_flatten_on_white_truncates_like_kiui():
    rgba = np.array([[[200, 100, 0, 128], [10, 20, 30, 255], [0, 0, 0, 0]]], np.uint8)
    out = flatten_on_white(rgba)
    a = np.float32(128) / 255
    expected_r = int((np.float32(200) / 255 * a + (1 - a)) * 255)
    assert out[0, 0, 0] == expected_r
    assert tuple(out[0, 1]) == (10, 20, 30) and tuple(out[0, 2]) == (255, 255, 255)


def test_shipped_example_image(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "coffee.png"
    assert example.stat().st_size < 300_000
    assert "CC0" in (example.parent / "ATTRIBUTION.md").read_text()
    rgba, had_alpha = load_image(example)
    assert rgba.shape == (256, 384, 4) and not had_alpha
    result = preprocess(example, image_size=128)
    assert result.image.shape == (1, 3, 128, 128) and result.background == "none"
    # A photo, not a flat test card: plenty of distinct colours inside the recentred frame.
    assert len(np.unique(result.input_rgb_uint8.reshape(-1, 3), axis=0)) > 5000
