"""Image augmentation applied per training batch, on the fly, with Keras layer names.

    data:
      augmentation:
        - RandomFlip: {mode: horizontal}
        - RandomCrop: {padding: 4}
        - RandomContrast: {factor: 0.2}

Geometric transforms (RandomFlip, RandomCrop, RandomTranslation) move whole pixels: each one maps
output rows and columns to source rows and columns per image, the maps are composed on the host and
applied to the raw (uint8) batch as one gather on its device. Photometric ones (RandomBrightness,
RandomContrast) then act on the float batch in the data's own units (Keras's `value_range`
defaults to [0, 255]), before normalisation. So geometric transforms always come first, whatever
their place in the list; among themselves, and among the photometric ones, the list order holds.

Randomness: batch `b` of epoch `e` draws from its own generator, seeded from the run seed and
(e, b). A batch's augmentation therefore does not depend on timing, on prefetching or on which
batches came before it, and a resumed run (even from the middle of an epoch) repeats it exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlrun.checks import ANY_NUMBER, NON_NEGATIVE_INT, POSITIVE_INT, checked, choices, declare, nullable
from dlrun.errors import ArgumentError
from dlrun.registry import Registry, build_from_spec

AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")
#: SeedSequence spawn key of the augmentation stream, apart from engine.random's streams (0..3).
STREAM_KEY = 1000
FILL_MODES = ("reflect", "wrap", "nearest", "constant")


def _range(factor: Any, name: str) -> tuple[float, float]:
    """Keras factors: `f` means [-f, f]; a pair [lo, hi] is taken as is."""
    if isinstance(factor, (int, float)) and not isinstance(factor, bool):
        lo, hi = -abs(float(factor)), abs(float(factor))
    elif (
        isinstance(factor, (list, tuple))
        and len(factor) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in factor)
    ):
        lo, hi = float(factor[0]), float(factor[1])
    else:
        raise ArgumentError(f"{name} must be a number or a pair [low, high]. Received: {name}={factor!r}", name, factor)
    if lo > hi:
        raise ArgumentError(f"{name} must have low <= high. Received: {name}={factor!r}", name, factor)
    return lo, hi


def _index_map(src: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (possibly outside [0, size)) -> (indices inside, valid mask) for a fill mode."""
    if mode == "constant":
        valid = (src >= 0) & (src < size)
        return np.clip(src, 0, size - 1), valid
    if mode == "nearest":
        out = np.clip(src, 0, size - 1)
    elif mode == "wrap":
        out = np.mod(src, size)
    else:  # reflect: (d c b a | a b c d | d c b a)
        out = np.mod(src, 2 * size)
        out = np.where(out >= size, 2 * size - 1 - out, out)
    return out, np.ones(src.shape, dtype=bool)


class Augmentation:
    """Base: geometric ones return per-image row/column maps, photometric ones transform values."""

    geometric = False

    def maps(
        self, rng: np.random.Generator, n: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows (n, H), row_valid, cols (n, W), col_valid): output pixel (i, j) of image k reads source
        pixel (rows[k, i], cols[k, j]), or the fill value where a mask is False."""
        raise NotImplementedError

    def apply(self, rng: np.random.Generator, x: Any, xp: Any) -> Any:
        """Photometric: a new float array from the float batch `x` (N, H, W, C)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


def _identity(n: int, size: int) -> np.ndarray:
    return np.broadcast_to(np.arange(size), (n, size)).copy()


@AUGMENTATIONS.register("RandomFlip")
class RandomFlip(Augmentation):
    """Flip each image with probability 1/2, per axis.

    Args:
        mode: "horizontal", "vertical" or "horizontal_and_vertical". Defaults to
            "horizontal_and_vertical" (as Keras).
    """

    geometric = True
    bounds = declare(mode=choices("horizontal", "vertical", "horizontal_and_vertical"))

    def __init__(self, mode: str = "horizontal_and_vertical") -> None:
        self.mode = checked(self, "mode", mode)
        self._config = {"mode": mode}

    def maps(self, rng, n, height, width):
        rows, cols = _identity(n, height), _identity(n, width)
        if self.mode != "vertical":
            flip = rng.random(n) < 0.5
            cols[flip] = cols[flip, ::-1]
        if self.mode != "horizontal":
            flip = rng.random(n) < 0.5
            rows[flip] = rows[flip, ::-1]
        return rows, np.ones_like(rows, bool), cols, np.ones_like(cols, bool)


class _Shift(Augmentation):
    geometric = True
    fill_mode, fill_value = "constant", 0.0

    def _shifts(self, rng: np.random.Generator, n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def maps(self, rng, n, height, width):
        dy, dx = self._shifts(rng, n, height, width)
        rows, rvalid = _index_map(np.arange(height)[None, :] - dy[:, None], height, self.fill_mode)
        cols, cvalid = _index_map(np.arange(width)[None, :] - dx[:, None], width, self.fill_mode)
        return rows, rvalid, cols, cvalid


@AUGMENTATIONS.register("RandomCrop")
class RandomCrop(_Shift):
    """Pad with zeros by `padding` on every side, then cut a random window of the original size
    (the classic CIFAR-10 recipe). Keras's RandomCrop has no padding; here the output size is always
    the input size, so `height`/`width` may be given only equal to it.

    Args:
        padding: pixels added on each side before cropping. Defaults to 4.
        height: output height; must equal the image height. Defaults to the image height.
        width: output width; must equal the image width. Defaults to the image width.
    """

    bounds = declare(padding=NON_NEGATIVE_INT, height=nullable(POSITIVE_INT), width=nullable(POSITIVE_INT))

    def __init__(self, padding: int = 4, height: int | None = None, width: int | None = None) -> None:
        self.padding = checked(self, "padding", padding)
        self.height, self.width = checked(self, "height", height), checked(self, "width", width)
        self._config = {"padding": padding, "height": height, "width": width}

    def check_shape(self, shape: tuple[int, ...]) -> str | None:
        for name, want, got in (("height", self.height, shape[0]), ("width", self.width, shape[1])):
            if want is not None and want != got:
                return (
                    f"RandomCrop keeps the image size here: {name} must be {got} (or left out), got {want}; "
                    f"use padding to set how far the window moves"
                )
        return None

    def _shifts(self, rng, n, height, width):
        p = self.padding
        return rng.integers(-p, p + 1, n), rng.integers(-p, p + 1, n)


@AUGMENTATIONS.register("RandomTranslation")
class RandomTranslation(_Shift):
    """Shift each image by a random whole number of pixels.

    Args:
        height_factor: a fraction of the height: `f` shifts by up to f*H either way, [lo, hi] by
            lo*H to hi*H (positive: down).
        width_factor: the same for the width (positive: right).
        fill_mode: "reflect", "wrap", "nearest" or "constant". Defaults to "reflect" (as Keras).
        fill_value: the value of new pixels with fill_mode "constant". Defaults to 0.
    """

    bounds = declare(fill_mode=choices(*FILL_MODES), fill_value=ANY_NUMBER)

    def __init__(
        self, height_factor: Any, width_factor: Any, fill_mode: str = "reflect", fill_value: float = 0.0
    ) -> None:
        self.height_range = _range(height_factor, "height_factor")
        self.width_range = _range(width_factor, "width_factor")
        for name, (lo, hi) in (("height_factor", self.height_range), ("width_factor", self.width_range)):
            if lo < -1 or hi > 1:
                raise ArgumentError(f"{name} must lie in [-1, 1]. Received: {name}={[lo, hi]}", name, [lo, hi])
        self.fill_mode, self.fill_value = checked(self, "fill_mode", fill_mode), checked(self, "fill_value", fill_value)
        self._config = {
            "height_factor": height_factor,
            "width_factor": width_factor,
            "fill_mode": fill_mode,
            "fill_value": fill_value,
        }

    def _shifts(self, rng, n, height, width):
        (hlo, hhi), (wlo, whi) = self.height_range, self.width_range
        dy = np.rint(rng.uniform(hlo, hhi, n) * height).astype(np.int64)
        dx = np.rint(rng.uniform(wlo, whi, n) * width).astype(np.int64)
        return dy, dx


class _Photometric(Augmentation):
    def __init__(self, factor: Any, value_range: Any) -> None:
        if not isinstance(value_range, (list, tuple)) or len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise ArgumentError(
                f"value_range must be a pair [low, high] with low < high. Received: value_range={value_range!r}",
                "value_range",
                value_range,
            )
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self._config = {"factor": factor, "value_range": list(value_range)}


@AUGMENTATIONS.register("RandomBrightness")
class RandomBrightness(_Photometric):
    """Add a random offset to each image: factor * (high - low) of `value_range`, then clip.

    Args:
        factor: in [-1, 1]; `f` draws from [-f, f], [lo, hi] from that range.
        value_range: the range of the pixel values. Defaults to [0, 255] (as Keras).
    """

    def __init__(self, factor: Any, value_range: Any = (0, 255)) -> None:
        super().__init__(factor, value_range)
        self.range = _range(factor, "factor")
        if self.range[0] < -1 or self.range[1] > 1:
            raise ArgumentError(f"factor must lie in [-1, 1]. Received: factor={factor!r}", "factor", factor)

    def apply(self, rng, x, xp):
        lo, hi = self.value_range
        delta = rng.uniform(*self.range, len(x)).astype(np.float32) * np.float32(hi - lo)
        out = x + xp.asarray(delta).reshape(-1, *([1] * (x.ndim - 1)))
        return xp.clip(out, lo, hi, out=out)


@AUGMENTATIONS.register("RandomContrast")
class RandomContrast(_Photometric):
    """Scale each image's deviation from its per-channel mean by a random factor in [1 - lo, 1 + hi],
    then clip to `value_range`.

    Args:
        factor: `f` draws from [1 - f, 1 + f]; [lo, hi] from [1 - lo, 1 + hi]. Must be >= 0.
        value_range: the range of the pixel values. Defaults to [0, 255] (as Keras).
    """

    def __init__(self, factor: Any, value_range: Any = (0, 255)) -> None:
        super().__init__(factor, value_range)
        if isinstance(factor, (int, float)) and not isinstance(factor, bool):
            lo, hi = float(factor), float(factor)
        elif (
            isinstance(factor, (list, tuple))
            and len(factor) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in factor)
        ):
            lo, hi = float(factor[0]), float(factor[1])
        else:
            raise ArgumentError(
                f"factor must be a number or a pair [lower, upper]. Received: factor={factor!r}", "factor", factor
            )
        if lo < 0 or hi < 0 or lo > 1:
            raise ArgumentError(
                f"factor must be >= 0 (and the lower one <= 1). Received: factor={factor!r}", "factor", factor
            )
        self.range = (1.0 - lo, 1.0 + hi)

    def apply(self, rng, x, xp):
        lo, hi = self.value_range
        n, c = len(x), x.shape[-1]
        f = rng.uniform(*self.range, n).astype(np.float32)
        pixels = x.reshape(n, -1, c)
        # Per image and channel mean as a matrix product: far faster than a strided reduction.
        mean = xp.matmul(xp.full(pixels.shape[1], 1 / pixels.shape[1], dtype=x.dtype), pixels)  # (n, c)
        out = x * xp.asarray(f).reshape(n, *([1] * (x.ndim - 1)))  # (x - mean) * f + mean, in two passes
        shift = mean * xp.asarray(1 - f)[:, None]  # (n, c)
        w = x.shape[-2]  # add per image row (W*C values, the shift tiled): a long inner loop
        rows = out.reshape(n, -1, w * c)
        rows += xp.tile(shift, (1, w))[:, None, :]
        return xp.clip(out, lo, hi, out=out)


def parse(specs: list[Any]) -> list[Augmentation]:
    """Build the augmentations of a config list; ValueError/TypeError names the bad entry."""
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, dict) and len(spec) == 1 and "type" not in spec:
            name, args = next(iter(spec.items()))
            if args is not None and not isinstance(args, dict):
                raise ValueError(
                    f"augmentation[{i}]: the arguments of {name} must be a mapping, got {args!r}. "
                    f"Write `- {name}: {{...}}`"
                )
            spec = {"type": name, **(args or {})}
        try:
            out.append(build_from_spec(AUGMENTATIONS, spec))
        except ArgumentError as exc:
            raise type(exc)(f"augmentation[{i}]: {exc}", exc.name, exc.value) from None
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"augmentation[{i}]: {exc}") from None
    return out


def check_spec(specs: Any) -> str | None:
    """For the config schema: None when every entry builds, else the problem."""
    try:
        parse(specs)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


class Augmenter:
    """The configured augmentations, seeded from the run seed; makes one batch's random transform.

    Its state is only the run seed: each batch's generator is derived from (seed, epoch, batch), and
    the caller passes epoch and batch. `get_state`/`set_state` exist for checkpoints all the same.
    """

    def __init__(self, augmentations: list[Augmentation], seed: int, image_shape: tuple[int, ...]) -> None:
        if len(image_shape) != 3:
            raise ValueError(
                f"augmentation applies to images (height, width, channels); the inputs have shape {list(image_shape)}"
            )
        for aug in augmentations:
            problem = getattr(aug, "check_shape", lambda s: None)(image_shape)
            if problem:
                raise ValueError(problem)
        self.geometric = [a for a in augmentations if a.geometric]
        self.photometric = [a for a in augmentations if not a.geometric]
        self.seed = seed
        self.image_shape = tuple(image_shape)

    def rng(self, epoch: int, batch: int) -> np.random.Generator:
        seq = np.random.SeedSequence(self.seed, spawn_key=(STREAM_KEY, epoch, batch))
        return np.random.Generator(np.random.PCG64(seq))

    def get_state(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", self.seed))

    def geometric_batch(self, rng: np.random.Generator, x: Any, xp: Any) -> Any:
        """One gather applying every geometric transform to the raw batch (its dtype kept).

        Pixels with no source (constant fill) take the fill value of the last constant-fill transform.
        """
        if not self.geometric:
            return x
        n, h, w = x.shape[:3]
        rows, rvalid = _identity(n, h), np.ones((n, h), bool)
        cols, cvalid = _identity(n, w), np.ones((n, w), bool)
        k = np.arange(n)[:, None]
        for aug in self.geometric:
            r, rv, c, cv = aug.maps(rng, n, h, w)
            # Applying `aug` after the maps so far: output i reads what the earlier maps put at r[i].
            rows, rvalid = rows[k, r], rvalid[k, r] & rv
            cols, cvalid = cols[k, c], cvalid[k, c] & cv
        flat = (np.arange(n)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
        src = x.reshape(n * h * w, -1)
        valid = rvalid[:, :, None] & cvalid[:, None, :]
        if not valid.all():  # pixels with no source read one extra row holding the fill value
            fills = [a.fill_value for a in self.geometric if getattr(a, "fill_mode", "") == "constant"]
            flat = np.where(valid, flat, n * h * w)
            src = xp.concatenate([src, xp.full((1, src.shape[1]), fills[-1] if fills else 0, dtype=x.dtype)])
        return xp.take(src, xp.asarray(flat.reshape(-1)), axis=0).reshape(x.shape)

    def photometric_batch(self, rng: np.random.Generator, x: Any, xp: Any) -> Any:
        for aug in self.photometric:
            x = aug.apply(rng, x, xp)
        return x


def augmenter(specs: list[Any] | None, seed: int, image_shape: tuple[int, ...]) -> Augmenter | None:
    if not specs:
        return None
    return Augmenter(parse(specs), seed, image_shape)


__all__ = ["AUGMENTATIONS", "Augmenter", "augmenter", "check_spec", "parse"]
