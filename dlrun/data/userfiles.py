"""The user's own data: arrays in an `.npz`, or a table in a `.csv`.

npz: `x_train`, `y_train` and optionally `x_test`, `y_test`, read with `allow_pickle=False` (an
object array is refused, never unpickled). csv: numeric feature columns and one target column,
named by `data.target` (a header name, or an index); the header row is optional. For both,
`data.task` says whether the targets are class labels (integers from 0, or for csv any strings,
numbered in sorted order) or regression values.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from dlrun.data.registry import Arrays, Found
from dlrun.errors import DataError


def user_file(user_path: str | None) -> Found:
    """The file data.path names: found when it is one."""
    p = Path(user_path).expanduser() if user_path else None
    return Found(p, [], [p]) if p is not None and p.is_file() else Found(None)


def _existing(path: str | None, kind: str) -> Path:
    if not path:
        raise DataError(f"the {kind} dataset needs data.path: the file to read")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path {p} is not a file", hint=f"point data.path at your .{kind} file")
    return p


def labels_or_values(ys: list[np.ndarray], task: str, source: str) -> tuple[list[np.ndarray], int | None]:
    """Class labels as int64 (N,) with the class count, or regression targets as float32 (N, k)."""
    if task == "regression":
        out = []
        for y in ys:
            if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
                raise DataError(f"{source}: regression targets must be numbers, got {y.dtype}")
            y = y.astype(np.float32).reshape(len(y), -1)
            if not np.all(np.isfinite(y)):
                raise DataError(f"{source}: the targets contain NaN or infinite values")
            out.append(y)
        return out, None
    out = []
    for y in ys:
        if y.ndim > 1 and not (y.ndim == 2 and y.shape[1] == 1):
            raise DataError(
                f"{source}: class labels must be one integer per sample, got shape {list(y.shape)}",
                hint="one-hot labels are made from integers automatically "
                "(categorical_crossentropy); for several outputs use task: regression",
            )
        y = y.reshape(-1)
        if y.dtype == np.bool_:
            y = y.astype(np.int64)
        if not np.issubdtype(y.dtype, np.number) or (
            np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0)
        ):
            raise DataError(
                f"{source}: class labels must be integers, got {y.dtype} values such as {y[:3].tolist()}",
                hint="set data.task: regression to predict numbers",
            )
        y = y.astype(np.int64)
        if len(y) and y.min() < 0:
            raise DataError(f"{source}: class labels must be 0, 1, 2, ...; found {int(y.min())}")
        out.append(y)
    classes = max((int(y.max()) + 1 for y in out if len(y)), default=0)
    return out, classes


def _inputs(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 stays uint8 (images, scaled per batch); other numbers become float32."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{source}: inputs must be numbers, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{source}: the inputs contain NaN or infinite values")
    return x


def load_npz(path: str | None, task: str) -> Arrays:
    p = _existing(path, "npz")
    if not zipfile.is_zipfile(p):  # np.load would take any other file for a pickle and say so
        raise DataError(
            f"{p} is not an .npz file (a zip archive of .npy arrays)",
            hint="save it with np.savez(path, x_train=..., y_train=...); for a table use dataset: csv",
        )
    try:
        with np.load(p, allow_pickle=False) as npz:
            names = set(npz.files)
            missing = [k for k in ("x_train", "y_train") if k not in names]
            if missing:
                raise DataError(
                    f"{p} lacks {', '.join(missing)} (it holds {', '.join(sorted(names)) or 'nothing'})",
                    hint="save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)",
                )
            if ("x_test" in names) != ("y_test" in names):
                raise DataError(f"{p} has only one of x_test and y_test; give both or neither")
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in names}
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(
                f"{p} holds Python objects (pickled arrays) and was refused",
                hint="save plain numeric arrays; loading pickles can run code",
            ) from None
        raise DataError(f"{p} cannot be read ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p} is not a readable .npz file ({exc})") from None
    for split in ("train", "test"):
        if f"x_{split}" in arrays and len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DataError(
                f"{p}: x_{split} has {len(arrays[f'x_{split}'])} samples, y_{split} {len(arrays[f'y_{split}'])}"
            )
    x_tr = _inputs(arrays["x_train"], f"{p}: x_train")
    x_te = _inputs(arrays["x_test"], f"{p}: x_test") if "x_test" in arrays else None
    if x_te is not None and x_te.shape[1:] != x_tr.shape[1:]:
        raise DataError(f"{p}: x_test samples have shape {list(x_te.shape[1:])}, x_train {list(x_tr.shape[1:])}")
    ys, classes = labels_or_values([arrays["y_train"], *([arrays["y_test"]] if x_te is not None else [])], task, str(p))
    return Arrays(x_tr, ys[0], x_te, ys[1] if x_te is not None else None, classes, files=[p])


def npz_input_shape(path: str | None) -> tuple[int, ...] | None:
    """x_train's sample shape from the .npy header alone (None when the file cannot tell)."""
    try:
        with zipfile.ZipFile(Path(path).expanduser()) as z, z.open("x_train.npy") as f:  # type: ignore[arg-type]
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(f)
        return tuple(shape[1:])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, TypeError):
        return None


# -- csv -------------------------------------------------------------------------------------------
def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _rows(p: Path) -> tuple[list[list[str]], str]:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p} cannot be read as UTF-8 text ({exc})") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(",;\t", key=first.count) if first else ","
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{p} is empty")
    return rows, delimiter


def _target_index(target: str | int, header: list[str] | None, width: int, p: Path) -> int:
    if isinstance(target, int):
        if not -width <= target < width:
            raise DataError(f"data.target {target} is not a column of {p} ({width} columns)")
        return target % width
    if header is None:
        raise DataError(
            f"data.target {target!r} names a column, but {p} has no header row",
            hint="give the column's index instead (0 = first, -1 = last), or add a header",
        )
    names = [h.strip() for h in header]
    if target not in names:
        from dlrun.registry import did_you_mean

        raise DataError(
            f"{p} has no column {target!r}. {did_you_mean(target, names) or 'Columns: ' + ', '.join(names)}".rstrip()
        )
    return names.index(target)


def load_csv(path: str | None, target: str | int, task: str, header: bool | None = None) -> Arrays:
    """Features as float32 (N, F); the target as class labels or values (see `labels_or_values`)."""
    p = _existing(path, "csv")
    rows, _ = _rows(p)
    if header is None:  # a first row without a single number is a header
        header = all(_number(c) is None for c in rows[0])
    names = rows[0] if header else None
    body = rows[1:] if header else rows
    width = len(rows[0])
    if width < 2:
        raise DataError(
            f"{p} has {width} column; it needs features and a target", hint="is the delimiter one of , ; or tab?"
        )
    if not body:
        raise DataError(f"{p} has a header but no data rows")
    t = _target_index(target, names, width, p)
    feature_cols = [i for i in range(width) if i != t]
    col_name = (lambda i: repr(names[i].strip())) if names else (lambda i: str(i))
    x = np.empty((len(body), len(feature_cols)), np.float32)
    raw_targets = []
    first_line = 2 if header else 1
    for r, row in enumerate(body):
        if len(row) != width:
            raise DataError(f"{p}, row {r + first_line}: {len(row)} cells, expected {width}")
        for j, i in enumerate(feature_cols):
            value = _number(row[i])
            if value is None:
                raise DataError(
                    f"{p}, row {r + first_line}, column {col_name(i)}: {row[i]!r} is not a number",
                    hint="feature columns must be numeric (no missing values)",
                )
            x[r, j] = value
        raw_targets.append(row[t].strip())
    if not np.all(np.isfinite(x)):
        raise DataError(f"{p}: the features contain NaN or infinite values")
    numeric = [_number(v) for v in raw_targets]
    class_names = None
    if all(v is not None for v in numeric):
        y = np.asarray(numeric, dtype=np.float64)
    elif task == "classification":
        class_names = sorted(set(raw_targets))
        lookup = {name: k for k, name in enumerate(class_names)}
        y = np.asarray([lookup[v] for v in raw_targets], dtype=np.int64)
    else:
        bad = next(v for v, n in zip(raw_targets, numeric) if n is None)
        raise DataError(f"{p}: target column {col_name(t)} holds {bad!r}, not a number (task: regression)")
    (y,), classes = labels_or_values([y], task, f"{p}: target column {col_name(t)}")
    if class_names is not None:
        classes = len(class_names)
    return Arrays(x, y, None, None, classes, class_names, [p])


def csv_input_shape(path: str | None, header: bool | None = None) -> tuple[int, ...] | None:
    """(features,) from the first row alone, or None when the file cannot be read."""
    try:
        p = Path(path).expanduser()  # type: ignore[arg-type]
        with open(p, encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError, TypeError):
        return None
    delimiter = max(",;\t", key=first.count) if first else ","
    width = len(next(csv.reader([first], delimiter=delimiter), []))
    return (width - 1,) if width > 1 else None
