"""Input image -> the conditioning image of the pipeline (docs/inference.md#preprocessing).

Steps, as the reference `inference.py` does them:
1. read the file (Pillow; EXIF orientation applied; every mode turned into RGBA uint8);
2. pick the object mask: rembg when the user asks for it (`--rembg MODEL`, model file already on
   disk: nothing is ever downloaded), else the image's own alpha, else the whole image;
3. `recenter` exactly like `kiui.op.recenter` (Q15);
4. white background `rgb·a + (1−a)` (after rembg's premultiplied cut-out this gives the
   reference's `orig·a² + (1−a)` edges, Q14), `x = rgb·2 − 1`, bilinear resize to the preset's
   image size (align_corners=False, no antialias).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ort3d.runtime.area_resize import resize_area

MIN_SIDE = 8                 # below this there is no object to recentre
MAX_SIDE = 8192              # refused from the header, before any pixel is decoded
MAX_PIXELS = 50_000_000


class InputError(Exception):
    """Bad user input; the message is one line and names the file."""


@dataclass
class Preprocessed:
    image: torch.Tensor              # [1, 3, S, S] float32 in [-1, 1], S = preset image size
    input_rgb_uint8: np.ndarray      # [S0, S0, 3] recentred, white background (reference's _input.png)
    background: str                  # "rembg" | "alpha" | "none" (whole image taken as the object)
    notes: list[str] = field(default_factory=list)

    @property
    def input_image(self) -> torch.Tensor:
        """[3, S, S] in [0, 1]: the conditioning image as the views grid shows it."""
        return ((self.image[0] + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------- reading

def load_image(path, *, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS,
               min_side: int = MIN_SIDE) -> tuple[np.ndarray, bool]:
    """Read an image file as RGBA uint8 [H, W, 4]; `had_alpha` says whether alpha is not all 255."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its two bomb limits; make every such case an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_size(path, img.size, max_side, max_pixels, min_side)
                img.load()
                img = _apply_exif_orientation(img)
                rgba = _to_rgba(path, img)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{path}: image too large ({err})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError) as err:
        raise InputError(f"{path}: cannot decode image, corrupt or truncated ({err})") from None
    return rgba, bool((rgba[..., 3] < 255).any())


def _check_size(path: Path, size: tuple[int, int], max_side: int, max_pixels: int,
                min_side: int) -> None:
    width, height = size
    if width > max_side or height > max_side or width * height > max_pixels:
        raise InputError(f"{path}: image too large ({width}x{height} px; the limit is {max_side} px "
                         f"a side and {max_pixels / 1e6:g} MP)")
    if width < min_side or height < min_side:
        raise InputError(f"{path}: image too small ({width}x{height} px; need at least "
                         f"{min_side} px on each side)")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return img  # unreadable EXIF: keep the pixels as stored rather than refuse the photo


def _to_rgba(path: Path, img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16") or img.mode == "I":
        gray = np.asarray(img).astype(np.int64)
        if gray.min() < 0 or gray.max() > 65535:
            raise InputError(f"{path}: unsupported {img.mode} image with values outside 0..65535")
        # Full 16-bit range onto 0..255, rounded (Pillow's own convert would clip at 255).
        return _gray_to_rgba(((gray * 255 + 32767) // 65535).astype(np.uint8))
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        return _gray_to_rgba(np.rint(gray * 255).astype(np.uint8))
    try:
        return np.array(img.convert("RGBA"), dtype=np.uint8)
    except ValueError as err:
        raise InputError(f"{path}: unsupported colour mode {img.mode} ({err})") from None


def _gray_to_rgba(gray: np.ndarray) -> np.ndarray:
    alpha = np.full_like(gray, 255)
    return np.stack([gray, gray, gray, alpha], axis=-1)


def flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 -> RGB uint8 on white, truncating like `kiui.read_image(mode="uint8")`."""
    img = rgba.astype(np.float32) / 255
    rgb = img[..., :3] * img[..., 3:4] + (1 - img[..., 3:4])
    return (rgb * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- background removal

def rembg_model_candidates(model: str) -> list[Path]:
    """Where rembg looks for `<model>.onnx`: its current layout, then the legacy flat folder."""
    legacy = Path(os.path.expanduser(os.environ.get(
        "U2NET_HOME", os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net"))))
    if os.environ.get("U2NET_HOME"):
        home = legacy
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        home = Path(os.path.expanduser(os.environ.get(
            "REMBG_HOME", os.path.join(xdg, "rembg") if xdg else os.path.join("~", ".rembg"))))
    fname = f"{model}.onnx"
    return [home / "models" / model / fname, legacy / fname]


@contextlib.contextmanager
def _no_model_checksum():
    """Older rembg re-downloads a present model whose checksum it dislikes; this turns that off."""
    old = os.environ.get("MODEL_CHECKSUM_DISABLED")
    os.environ["MODEL_CHECKSUM_DISABLED"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MODEL_CHECKSUM_DISABLED"]
        else:
            os.environ["MODEL_CHECKSUM_DISABLED"] = old


def remove_background(rgb: np.ndarray, model: str, source: str = "input image") -> np.ndarray:
    """rembg cut-out (RGBA uint8, RGB premultiplied by rembg's naive cut-out) of an RGB uint8 image.

    Only runs with a model file already on disk; rembg is never allowed to download one.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model):
        raise InputError(f"{source}: --rembg expects a rembg model name such as u2net, got {model!r}")
    try:
        import rembg
    except ImportError:
        raise InputError(f"{source}: --rembg {model} needs the rembg package "
                         f"(pip install rembg), which is not installed") from None
    candidates = rembg_model_candidates(model)
    if not any(path.is_file() for path in candidates):
        raise InputError(f"{source}: rembg model file {candidates[-1]} not found; download "
                         f"{model}.onnx there (or set U2NET_HOME to its folder): ort3d never "
                         f"downloads models")
    try:
        with _no_model_checksum():
            session = rembg.new_session(model)
    except ValueError as err:
        raise InputError(f"{source}: rembg cannot use model {model!r} ({err})") from None
    return np.asarray(rembg.remove(rgb, session=session), dtype=np.uint8)


# ----------------------------------------------------------------------------- recentring

def recenter(rgba: np.ndarray, mask: np.ndarray, border_ratio: float = 0.2,
             source: str = "input image") -> np.ndarray:
    """`kiui.op.recenter` for RGBA uint8: the object's box, scaled to (1 − border_ratio) of the
    longer side, centred on a transparent square canvas.

    Like the reference, the box excludes the last masked row and column, the crop is resized
    with OpenCV's INTER_AREA in float32 and the result is truncated to uint8.
    """
    height, width, channels = rgba.shape
    size = max(height, width)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InputError(f"{source}: the object mask is empty (fully transparent image or no "
                         f"object found)")
    top, left = int(rows.min()), int(cols.min())
    box_h, box_w = int(rows.max()) - top, int(cols.max()) - left
    desired = int(size * (1 - border_ratio))
    scale = desired / max(box_h, box_w, 1)
    out_h, out_w = int(box_h * scale), int(box_w * scale)
    if out_h == 0 or out_w == 0:
        raise InputError(f"{source}: the object is too thin to recentre (mask box "
                         f"{box_w + 1}x{box_h + 1} px)")
    crop = rgba[top:top + box_h, left:left + box_w].astype(np.float32) / 255
    canvas = np.zeros((size, size, channels), dtype=np.float32)
    y0, x0 = (size - out_h) // 2, (size - out_w) // 2
    canvas[y0:y0 + out_h, x0:x0 + out_w] = resize_area(crop, out_w, out_h)
    return (canvas * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- entry point

def preprocess(path, image_size: int, rembg_model: str | None = None) -> Preprocessed:
    """Image file -> conditioning tensor [1, 3, image_size, image_size] in [-1, 1]
    (docs/inference.md#preprocessing)."""
    rgba, had_alpha = load_image(path)
    notes = []
    if rembg_model is not None:
        rgba = remove_background(flatten_on_white(rgba), rembg_model, source=str(path))
        background = "rembg"
        notes.append(f"background removed with rembg model {rembg_model}"
                     + (" (the image's own alpha was flattened on white first, as the reference "
                        "does)" if had_alpha else ""))
    elif had_alpha:
        background = "alpha"
        notes.append("using the image's alpha channel as the object mask")
    else:
        background = "none"
        notes.append("no alpha channel and no --rembg: the whole image is taken as the object "
                     "(give a cut-out RGBA image or --rembg MODEL for better results)")
    square = recenter(rgba, rgba[..., 3] > 0, border_ratio=0.2, source=str(path))

    img = square.astype(np.float32) / 255
    alpha = img[..., 3:4]
    rgb = img[..., :3] * alpha + (1 - alpha)
    x = torch.from_numpy(rgb * 2 - 1).permute(2, 0, 1).unsqueeze(0).contiguous()
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return Preprocessed(image=x, input_rgb_uint8=(rgb * 255).astype(np.uint8),
                        background=background, notes=notes)
