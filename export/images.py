"""The one image-file loader of the deployment side: Pillow and NumPy only.

Used by the bundle's ``predict.py`` (:mod:`export.predict`) and by the demo (``python -m app``), so
that both classify an image file from the same array. Neither TensorFlow nor anything of
``ardir_tf`` is imported: the export copies this file into the bundle (``DIR/images.py``, beside
``DIR/predict.py``), where it runs without this project.

Conversion of a file of any size and mode to the model's input ``(H, W, C)``:

1. the EXIF orientation is applied (a phone photo is shown the right way up);
2. 16-bit and float images are rescaled to 8 bit (not clipped at 255);
3. transparent pixels are composed over white, as a browser shows them;
4. conversion to grayscale (``C == 1``) or RGB (``C == 3``) with Pillow's own formulas;
5. a bilinear resize to ``W x H`` when the size differs (the aspect ratio is not kept);
6. pixels / 255 as float32 in [0, 1]; ``invert`` then takes ``1 - x`` (MNIST models saw white
   digits on black, a scan shows dark ink on white).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np



class ImageError(ValueError):
    """A file that cannot be turned into the model's input; the message says why (one line)."""


def _to_channels(image, channels: int):
    """``image`` (a ``PIL.Image``) converted to 8-bit grayscale (``channels == 1``) or RGB."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(image, np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if image.mode == "F" and a.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L" if channels == 1 else "RGB")


def load_image(path: str, shape: Sequence[int], invert: bool = False, *, max_bytes: int | None = None,
               max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Reads an image file and converts it to the model's input (see the module docstring).

    Args:
        path: an image file Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF, ...).
        shape: the model's ``(H, W, C)`` with ``C`` 1 or 3.
        invert: take ``1 - x`` after the conversion.
        max_bytes: refuse a larger file (``None``: no limit).
        max_pixels: refuse an image of more pixels, checked before decoding: a small PNG can
            expand to gigabytes (``None``: only Pillow's own decompression-bomb limit).

    Returns:
        ``(x, info)``: float32 ``[H, W, C]`` in [0, 1] and ``{"size": [width, height], "mode": ...}``
        of the file as stored.

    Raises:
        ImageError: a missing, empty, too large, unreadable or damaged file, too many pixels, or a
            model that does not take 1 or 3 channels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    h, w, c = (int(d) for d in shape)
    if c not in (1, 3):
        raise ImageError(f"image files can feed 1- or 3-channel models only; this model takes {c} channels")
    if not path or not os.path.isfile(path):
        raise ImageError("no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise ImageError("the file is empty")
    if max_bytes is not None and size > max_bytes:
        raise ImageError(f"the file is too large ({size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(f"the image is too large ({width}x{height} pixels; the limit is "
                                 f"{max_pixels / 1e6:.0f} million pixels)")
            mode = image.mode
            image.load()
            image = _to_channels(ImageOps.exif_transpose(image), c)
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BILINEAR)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read (use PNG, JPEG, GIF, BMP, WebP or TIFF)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"the image is too large: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"the image file is damaged or unsupported ({type(err).__name__}: {err})") from None
    x = np.asarray(image, np.float32).reshape(h, w, c) / np.float32(255.0)
    if invert:
        x = 1.0 - x
    return x, {"size": [int(width), int(height)], "mode": mode}
