"""The user's own data: arrays in an `.npz`, or a table in a `.csv`.

npz: `x_train`, `y_train` and optionally `x_test`, `y_test`, read with `allow_pickle=False` (an
object array is refused, never unpickled). csv: numeric feature columns and one target column,
named by `data.target` (a header name, or an index); the header row is optional. For both,
`data.task` says whether the targets are class labels (integers from 0, or for csv any strings,
numbered in sorted order) or regression values.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np

from dlrun.data.registry import Arrays, Found
from dlrun.errors import DataError
from dlrun.npzfile import Header, NpzReader, regular_file


def user_file(user_path: str | None) -> Found:
    """The file data.path names: found when it is one."""
    p = Path(user_path).expanduser() if user_path else None
    return Found(p, [], [p]) if p is not None and p.is_file() else Found(None)


def _existing(path: str | None, kind: str) -> Path:
    if not path:
        raise DataError(f"the {kind} dataset needs data.path: the file to read")
    p = Path(path).expanduser()
    if not regular_file(p):  # a FIFO or device would block or never end
        what = (
            " (it is a folder)"
            if p.is_dir()
            else " (it is a FIFO, device or socket; only regular files are read)"
            if p.exists()
            else ""
        )
        raise DataError(f"data.path {p} is not a file{what}", hint=f"point data.path at your .{kind} file")
    return p


def _open_npz(p: Path) -> NpzReader:
    if not zipfile.is_zipfile(p):  # np.load would take any other file for a pickle and say so
        raise DataError(
            f"{p} is not an .npz file (a zip archive of .npy arrays)",
            hint="save it with np.savez(path, x_train=..., y_train=...); for a table use dataset: csv",
        )
    return NpzReader(p)


#: Floats above this are not exact integers (and past int64 they would wrap): never a class number.
_MAX_LABEL = 2**53


def labels_or_values(ys: list[np.ndarray], task: str, source: str) -> tuple[list[np.ndarray], int | None]:
    """Class labels as int64 (N,) with the class count, or regression targets as float32 (N, k)."""
    for y in ys:
        if y.ndim == 0:
            raise DataError(f"{source}: the targets are a single value (a 0-d array), not one per sample")
        if y.dtype.names is not None or y.dtype.kind not in ("iuf" if task == "regression" else "biuf"):
            what = "a structured array" if y.dtype.names is not None else f"{y.dtype} values"
            if task == "regression":
                raise DataError(f"{source}: regression targets must be numbers, got {what}")
            raise DataError(
                f"{source}: class labels must be integers 0, 1, 2, ..., got {what}",
                hint="np.unique(names, return_inverse=True)[1] numbers named classes",
            )
    if task == "regression":
        out = []
        for y in ys:
            with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf, refused below
                y = y.astype(np.float32).reshape(len(y), -1)
            if not np.all(np.isfinite(y)):
                bad = int(np.count_nonzero(~np.isfinite(y)))
                raise DataError(f"{source}: the targets contain {bad:,} NaN or infinite values (or beyond float32)")
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
        if y.dtype.kind == "f":
            finite = np.isfinite(y)
            if not finite.all():
                raise DataError(
                    f"{source}: {int(np.count_nonzero(~finite)):,} class labels are NaN or infinite",
                    hint="drop or fix those samples (a missing label cannot be learnt)",
                )
            fractional = np.mod(y, 1) != 0
            if fractional.any():
                raise DataError(
                    f"{source}: class labels must be integers, got {y.dtype} values such as "
                    f"{y[fractional][:3].tolist()}",
                    hint="set data.task: regression to predict numbers",
                )
        if len(y) and y.dtype.kind in "fu" and y.max() > _MAX_LABEL:
            raise DataError(
                f"{source}: a class label is {y.max():.6g}, too large to be a class number",
                hint="class labels are 0, 1, 2, ... (one per class); set data.task: regression to predict numbers",
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
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf, refused below
        x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{source}: the inputs contain NaN or infinite values")
    return x


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_HINT = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def _npz_headers(p: Path, npz: NpzReader) -> list[str]:
    """The keys to read, after every check the headers allow (nothing is read or allocated yet)."""
    missing = [k for k in ("x_train", "y_train") if k not in npz]
    if missing:
        raise DataError(
            f"{p} lacks {', '.join(missing)} (it holds {', '.join(sorted(npz.names))[:200] or 'nothing'})",
            hint=_NPZ_HINT,
        )
    if ("x_test" in npz) != ("y_test" in npz):
        raise DataError(f"{p} has only one of x_test and y_test; give both or neither")
    keys = [k for k in _NPZ_KEYS if k in npz]
    headers = {k: npz.header(k) for k in keys}
    for split in ("train", "test"):
        if f"x_{split}" not in headers:
            continue
        x, y = headers[f"x_{split}"], headers[f"y_{split}"]
        _x_header(p, x)
        if not y.shape:
            raise DataError(f"{p}: y_{split} is a single value (a 0-d array), not one label per sample", hint=_NPZ_HINT)
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{p}: x_{split} has {x.shape[0]:,} samples, y_{split} {y.shape[0]:,}")
    if "x_test" in headers and headers["x_test"].shape[1:] != headers["x_train"].shape[1:]:
        raise DataError(
            f"{p}: x_test samples have shape {list(headers['x_test'].shape[1:])}, "
            f"x_train {list(headers['x_train'].shape[1:])}"
        )
    if headers["x_train"].shape[0] == 0:
        raise DataError(f"{p}: x_train holds no samples (shape {list(headers['x_train'].shape)})")
    return keys


def _x_header(p: Path, x: Header) -> None:
    """x must be a numeric array of shape (samples, features...)."""
    if x.dtype.names is not None or x.dtype.kind not in "iuf":
        what = "a structured array" if x.dtype.names is not None else f"{x.dtype} values"
        raise DataError(
            f"{p}: {x.name} holds {what}; inputs must be a numeric array of shape (samples, features...)",
            hint="save x as float32 (or uint8 images)",
        )
    if len(x.shape) < 2:
        raise DataError(
            f"{p}: {x.name} has shape {list(x.shape)}; inputs must be an array of shape (samples, features...)",
            hint="for one feature per sample save x.reshape(-1, 1)",
        )


def npz_headers_check(path: str | None) -> None:
    """Every check of an npz dataset that its headers allow, reading no array (for validate)."""
    p = _existing(path, "npz")
    with _open_npz(p) as npz:
        _npz_headers(p, npz)


def load_npz(path: str | None, task: str) -> Arrays:
    p = _existing(path, "npz")
    with _open_npz(p) as npz:
        arrays = npz.read_all(_npz_headers(p, npz))
    x_tr = _inputs(arrays["x_train"], f"{p}: x_train")
    x_te = _inputs(arrays["x_test"], f"{p}: x_test") if "x_test" in arrays else None
    ys, classes = labels_or_values([arrays["y_train"], *([arrays["y_test"]] if x_te is not None else [])], task, str(p))
    return Arrays(x_tr, ys[0], x_te, ys[1] if x_te is not None else None, classes, files=[p])


def npz_input_shape(path: str | None) -> tuple[int, ...] | None:
    """x_train's sample shape from the .npy header alone (None when the file cannot tell)."""
    if not path or not regular_file(Path(path).expanduser()):
        return None
    try:
        p = Path(path).expanduser()
        with NpzReader(p) as npz:
            x = npz.header("x_train")
        _x_header(p, x)
    except DataError:  # loading says what is wrong
        return None
    return tuple(x.shape[1:])


# -- csv -------------------------------------------------------------------------------------------
def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _rows(p: Path) -> tuple[list[tuple[int, list[str]]], str]:
    """The non-blank records as (line where it starts, cells), and the delimiter."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p} cannot be read as UTF-8 text ({exc})") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(",;\t", key=first.count) if first else ","
    # strict: a quote never closed (or text right after a closing one) is an error, not a cell
    # swallowing the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        problem = (
            'a quote (") opened here is never closed'
            if "unexpected end of data" in str(exc) or "field larger" in str(exc)
            else f"bad quoting ({exc})"
        )
        raise DataError(
            f"{p}, row {start}: {problem}", hint='quote a cell as "..." on one line, or remove the stray quote'
        ) from None
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


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite32(value: float) -> bool:
    """Finite, and still finite as float32 (what features and regression targets become)."""
    return abs(value) <= _FLOAT32_MAX


def _cell(cell: str) -> str:
    """A cell for a message: short, and where a quote made it span lines, said so."""
    return f"{cell!r:.60}" + (" (a quoted cell spanning lines: is a quote unbalanced?)" if "\n" in cell else "")


def load_csv(path: str | None, target: str | int, task: str, header: bool | None = None) -> Arrays:
    """Features as float32 (N, F); the target as class labels or values (see `labels_or_values`).

    Every cell must be filled: an empty or unreadable one is an error naming its row and column
    (an empty target would otherwise become a class of its own).
    """
    p = _existing(path, "csv")
    rows, _ = _rows(p)
    if header is None:  # a first row without a single number is a header
        header = all(_number(c) is None for c in rows[0][1])
    names = rows[0][1] if header else None
    body = rows[1:] if header else rows
    width = len(rows[0][1])
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
    for r, (line, row) in enumerate(body):
        if len(row) != width:
            raise DataError(f"{p}, row {line}: {len(row)} cells, expected {width}")
        for j, i in enumerate(feature_cols):
            value = _number(row[i])
            if value is None:
                raise DataError(
                    f"{p}, row {line}, column {col_name(i)}: {_cell(row[i])} is not a number",
                    hint="feature columns must be numeric (no missing values)",
                )
            if not _finite32(value):
                raise DataError(
                    f"{p}, row {line}, column {col_name(i)}: {_cell(row[i])} is not a finite number"
                    + (" (beyond float32)" if np.isfinite(value) else ""),
                    hint="feature columns must be finite numbers (no NaN, no missing values)",
                )
            x[r, j] = value
        cell = row[t].strip()
        where = f"{p}, row {line}, column {col_name(t)}"
        if not cell:
            raise DataError(
                f"{where}: the target is empty", hint="every row needs a target; drop or fill the rows without one"
            )
        value = _number(cell)
        if task == "regression" and (value is None or not _finite32(value)):
            raise DataError(
                f"{where}: the target {_cell(cell)} is not a finite number (task: regression)",
                hint="regression targets must be numbers; for named classes use task: classification",
            )
        if value is not None and not np.isfinite(value):
            raise DataError(f"{where}: the class label {_cell(cell)} is not a class", hint="drop or fix this row")
        raw_targets.append(cell)
    numeric = [_number(v) for v in raw_targets]
    class_names = None
    if all(v is not None for v in numeric):
        y = np.asarray(numeric, dtype=np.float64)
    else:  # classification with named classes (regression refused any non-number above)
        class_names = sorted(set(raw_targets))
        lookup = {name: k for k, name in enumerate(class_names)}
        y = np.asarray([lookup[v] for v in raw_targets], dtype=np.int64)
    (y,), classes = labels_or_values([y], task, f"{p}: target column {col_name(t)}")
    if class_names is not None:
        classes = len(class_names)
    return Arrays(x, y, None, None, classes, class_names, [p])


def csv_check(path: str | None) -> None:
    """What can be checked of a csv dataset without parsing it (for validate): a regular file."""
    _existing(path, "csv")


def csv_input_shape(path: str | None, header: bool | None = None) -> tuple[int, ...] | None:
    """(features,) from the first row alone, or None when the file cannot be read."""
    if not path or not regular_file(Path(path).expanduser()):  # a FIFO would block here
        return None
    try:
        with open(Path(path).expanduser(), encoding="utf-8-sig") as f:
            first = ""
            while not first.strip():
                first = f.readline(1 << 20)  # a first line of any length is never read whole
                if not first:
                    break
    except (OSError, UnicodeDecodeError):
        return None
    delimiter = max(",;\t", key=first.count) if first else ","
    width = len(next(csv.reader([first], delimiter=delimiter), []))
    return (width - 1,) if width > 1 else None
