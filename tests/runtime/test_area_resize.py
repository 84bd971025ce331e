"""numpy copy of OpenCV's INTER_AREA resize: hand-computed cases and bit-equality with cv2."""

import numpy as np
import pytest

from ort3d.runtime.area_resize import resize_area


def test_fractional_shrink_is_a_box_filter():
    # 3 -> 2 px: output cells cover source [0, 1.5) and [1.5, 3).
    row = np.array([[0.3, 0.6, 0.9]], np.float32)
    out = resize_area(row, 2, 1)
    # float32 weights 1/1.5 and 0.5/1.5: a few ulps from the exact 0.4 and 0.8.
    np.testing.assert_allclose(out, [[0.4, 0.8]], rtol=0, atol=1e-6)


def test_integer_shrink_is_a_block_mean():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = resize_area(img, 2, 2)
    np.testing.assert_array_equal(out, [[2.5, 4.5], [10.5, 12.5]])


def test_growing_uses_the_area_rule():
    # 2 -> 3 px: [S0, (S0+S1)/2, S1]; 2 -> 4 px (exact 2×): pixel replication.
    row = np.array([[0.25, 0.75]], np.float32)
    np.testing.assert_array_equal(resize_area(row, 3, 1), [[0.25, 0.5, 0.75]])
    np.testing.assert_array_equal(resize_area(row, 4, 1), [[0.25, 0.25, 0.75, 0.75]])


def test_same_size_is_a_copy_and_bad_arguments_raise():
    img = np.random.default_rng(0).random((5, 6, 4), dtype=np.float32)
    out = resize_area(img, 6, 5)
    assert np.array_equal(out, img) and out is not img
    with pytest.raises(TypeError):
        resize_area(img.astype(np.float64), 3, 3)
    with pytest.raises(ValueError):
        resize_area(img, 0, 3)


CASES = [
    # (src h, src w, dst h, dst w): fractional shrink, integer shrink (2× SIMD path, 3×, mixed
    # 2×/4×), growth, one axis growing while the other shrinks, sizes recenter really produces.
    (37, 53, 13, 29), (100, 31, 50, 12), (10, 10, 3, 3),
    (64, 64, 32, 32), (12, 14, 6, 7), (60, 90, 20, 30), (64, 64, 32, 16),
    (10, 10, 20, 20), (7, 9, 20, 25), (17, 400, 150, 200), (300, 3, 240, 240),
    (409, 409, 409, 300), (159, 239, 159, 127),
]


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_bit_equal_to_cv2(channels):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (dev extra) not installed")
    rng = np.random.default_rng(channels)
    for src_h, src_w, dst_h, dst_w in CASES:
        src = rng.random((src_h, src_w, channels), dtype=np.float32)
        # uint8-derived values as recenter feeds them, and arbitrary floats.
        for img in (src, (src * 255).astype(np.uint8).astype(np.float32) / 255):
            expected = cv2.resize(img, (dst_w, dst_h), interpolation=cv2.INTER_AREA)
            got = resize_area(img[..., 0] if channels == 1 else img, dst_w, dst_h)
            # Exact: the uint8 truncation after recentring turns 1 ulp into a grey level.
            # (Checked against the x86-64 wheels of OpenCV 4.10 and 5.0.)
            np.testing.assert_array_equal(got.reshape(expected.shape), expected,
                                          err_msg=f"{(src_h, src_w)} -> {(dst_h, dst_w)}")
