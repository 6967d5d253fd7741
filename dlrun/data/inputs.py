"""Inputs for `dlrun predict`: arrays from an .npz file, or one image (PNG/JPEG, needs Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrun.errors import DataError
from dlrun.npzfile import NpzReader, regular_file


def load_inputs(path: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, float | None]:
    """Inputs for `predict`: an .npz's array `x`, or an image file (PNG/JPEG, needs Pillow).

    One sample of the model's input shape, or a batch of them; a batch lacking only the model's
    single channel axis, (N, H, W) for (H, W, 1), gets it. Images are converted to the model's
    channels and size-checked; uint8 data is scaled to [0, 1].
    """
    path = Path(path)
    if not regular_file(path):  # a FIFO or device would block
        problem = "not found" if not path.exists() else "a folder" if path.is_dir() else "not a regular file"
        raise DataError(f"input file {problem}: {path}", hint="pass an .npz with an array 'x', or a PNG/JPEG image")
    x = _read_npz(path) if path.suffix == ".npz" else _read_image(path, input_shape)
    shape = tuple(input_shape)
    if x.shape == shape:
        x = x[None]
    elif x.ndim == len(shape) and shape[-1] == 1 and x.shape[1:] == shape[:-1]:
        x = x[..., None]
    if tuple(x.shape[1:]) != shape:
        hint = None
        if path.suffix != ".npz" and len(shape) == 3:
            hint = (
                f"resize the image to {shape[1]}x{shape[0]} pixels first, e.g. with Pillow: "
                f"Image.open(src).resize(({shape[1]}, {shape[0]})).save(dst)"
            )
        raise DataError(f"{path} has inputs of shape {list(x.shape[1:])}; the model expects {list(shape)}", hint=hint)
    if len(x) == 0:
        raise DataError(f"{path} holds no samples (its array 'x' has shape {list(x.shape)})")
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{path} holds {x.dtype} inputs; the model takes real numbers", hint="save x as float32 or uint8"
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise DataError(f"{path} holds {bad:,} NaN or infinite input values", hint="clean or drop those samples first")
    return x, (1 / 255 if x.dtype == np.uint8 else None)


def _read_npz(path: Path) -> np.ndarray:
    """The array `x`, its header and size checked before it is read (dlrun.npzfile)."""
    with NpzReader(path) as npz:
        if "x" not in npz:
            found = ", ".join(npz.names)[:200] or "no arrays"
            raise DataError(
                f"{path} has no array 'x' (it holds: {found})",
                hint="save the inputs as x: np.savez(path, x=inputs)",
            )
        return npz.read("x")


def _read_image(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow", hint="pip install 'dlrun[plot]' (or pillow)") from None
    try:
        with Image.open(path) as img:
            # Pillow refuses images above its MAX_IMAGE_PIXELS (decompression bombs) before decoding.
            pixels = np.asarray(img.convert("L" if input_shape[-1] == 1 else "RGB"))
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path} is refused: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path} is not a readable image ({exc})") from None
    return pixels.reshape(1, *pixels.shape[:2], -1)
