"""Inputs for `dlrun predict`: arrays from an .npz file, or one image (PNG/JPEG, needs Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrun.errors import DataError


def load_inputs(path: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, float | None]:
    """Inputs for `predict`: an .npz (array `x`, or its only array) or an image file (PNG/JPEG, needs Pillow).

    Images are converted to the model's channels and size-checked; uint8 data is scaled to [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                key = "x" if "x" in npz.files else (npz.files[0] if len(npz.files) == 1 else None)
                if key is None:
                    raise DataError(f"{path} holds several arrays ({', '.join(npz.files)}); name the inputs 'x'")
                x = npz[key]
        except ValueError as exc:
            raise DataError(f"{path} cannot be read: {exc}") from None
        if x.shape == input_shape:
            x = x[None]
    else:
        try:
            from PIL import Image
        except ImportError:
            raise DataError("reading images needs Pillow", hint="pip install 'dlrun[plot]' (or pillow)") from None
        try:
            img = Image.open(path)
            img = img.convert("L" if input_shape[-1] == 1 else "RGB")
        except OSError as exc:
            raise DataError(f"{path} is not a readable image ({exc})") from None
        x = np.asarray(img)
        x = x.reshape(1, *x.shape[:2], -1)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{path} has inputs of shape {list(x.shape[1:])}; the model expects {list(input_shape)}")
    return x, (1 / 255 if x.dtype == np.uint8 else None)
