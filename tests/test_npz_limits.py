"""Hostile .npz files (datasets, checkpoints, predict inputs) are refused from their headers and
declared sizes, before anything is allocated or inflated: a header claiming exabytes, a zip bomb,
a FIFO, a pickle."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dlrun import npzfile
from dlrun.data.dataset import load_dataset
from dlrun.data.inputs import load_inputs
from dlrun.errors import CheckpointError, DataError
from dlrun.runs import checkpoint as ck


def npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A valid .npy 1.0 header claiming `shape`, without the data."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()  # the magic string included


def forged(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def bomb(path: Path, name: str, mib: int, extra: dict[str, bytes] | None = None) -> Path:
    """A member whose .npy header honestly claims `mib` MiB of zeros, deflated to a few kB."""
    header = npy_header((mib << 17,))  # float64: 8 bytes each
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open(name, "w", force_zip64=True) as f:
            f.write(header)
            zeros = bytes(1 << 20)
            for _ in range(mib):
                f.write(zeros)
        for k, v in (extra or {}).items():
            z.writestr(k, v)
    return path


HUGE = (10**12, 10**6)  # "Unable to allocate 3.47 EiB" from np.load


def test_a_header_claiming_exabytes_is_refused_before_allocating(tmp_path):
    p = forged(tmp_path / "huge.npz", {"x_train.npy": npy_header(HUGE) + bytes(64), "y_train.npy": npy(np.zeros(2))})
    with pytest.raises(npzfile.Corrupt, match=r"claims shape \[1000000000000, 1000000\] of float64 \(.*EiB\)"):
        npzfile.read_npz(p)
    with pytest.raises(DataError, match="huge.npz: entry 'x_train' claims shape"):
        load_dataset({"dataset": "npz", "path": str(p), "task": "classification"}, 0)
    # np.load itself would try to allocate it: the property this guards against.
    with np.load(p) as z, pytest.raises((MemoryError, ValueError)):
        z["x_train"]


def test_a_zip_bomb_is_refused_from_its_declared_size(tmp_path):
    p = bomb(tmp_path / "bomb.npz", "x_train.npy", 64, {"y_train.npy": npy(np.zeros(2))})
    assert p.stat().st_size < 1 << 20  # 64 MiB inflated from well under 1 MiB
    with pytest.raises(npzfile.TooLarge, match=r"64 MiB\), more than the 1 MiB allowed") as info:
        npzfile.read_npz(p, max_bytes=1 << 20)
    assert "DLRUN_MAX_ARRAY_BYTES" in info.value.hint


def test_a_zip_bomb_within_the_byte_limit_is_refused_by_its_ratio(tmp_path, monkeypatch):
    monkeypatch.setattr(npzfile, "BOMB_MIN_BYTES", 1 << 20)  # the real floor is 256 MiB: too slow to build
    p = bomb(tmp_path / "bomb.npz", "x.npy", 8)
    with pytest.raises(npzfile.TooLarge, match=r"8 MiB\), inflated from .* KiB \(over 200:1\): refused as a zip bomb"):
        npzfile.read_npz(p)
    np.savez_compressed(tmp_path / "images.npz", x=np.random.default_rng(0).integers(0, 255, 1 << 21, np.uint8))
    assert npzfile.read_npz(tmp_path / "images.npz")["x"].size == 1 << 21  # real data compresses far less


def test_the_limit_is_configurable_and_counts_all_arrays_together(tmp_path, monkeypatch):
    p = tmp_path / "two.npz"
    np.savez(p, a=np.zeros(1000), b=np.zeros(1000))  # 8000 bytes each
    monkeypatch.setenv("DLRUN_MAX_ARRAY_BYTES", "10000")
    assert npzfile.limit() == 10000
    assert npzfile.read_npz(p, ["a"])["a"].shape == (1000,)
    with pytest.raises(npzfile.TooLarge, match="its arrays take 15.6 KiB, more than the 9.77 KiB allowed"):
        npzfile.read_npz(p)
    monkeypatch.setenv("DLRUN_MAX_ARRAY_BYTES", "lots")
    with pytest.raises(DataError, match="not a number of bytes"):
        npzfile.limit()
    monkeypatch.delenv("DLRUN_MAX_ARRAY_BYTES")
    assert 0 < npzfile.limit() <= npzfile.MAX_BYTES


def test_truncated_members_and_non_arrays_are_corrupt(tmp_path):
    good = npy(np.arange(100.0))
    p = forged(tmp_path / "cut.npz", {"x.npy": good[:-8], "junk.npy": b"not an array", "raw": b"bytes"})
    with npzfile.NpzReader(p) as z:
        assert sorted(z.names) == ["junk", "raw", "x"]
        with pytest.raises(npzfile.Corrupt, match="'x' claims shape \\[100\\] of float64 .* but holds 792 B"):
            z.read("x")
        with pytest.raises(npzfile.Corrupt, match="'junk' is not a readable .npy array"):
            z.read("junk")
        with pytest.raises(npzfile.Corrupt, match="'raw' is not an .npy array"):
            z.read("raw")
        with pytest.raises(npzfile.Corrupt, match="has no entry 'nope'"):
            z.read("nope")


def test_object_arrays_are_refused_from_the_header(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(npzfile.PickledArray, match="holds Python objects"):
        npzfile.read_npz(p)


def test_valid_files_read_as_np_load_reads_them(tmp_path):
    p = tmp_path / "ok.npz"
    arrays = {"a": np.arange(12, dtype=np.int16).reshape(3, 4), "b": np.asfortranarray(np.eye(3)), "c": np.array(2.5)}
    np.savez_compressed(p, **arrays)
    out = npzfile.read_npz(p)
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype


# -- the three readers use it ------------------------------------------------------------------------
def test_dataset_predict_and_checkpoint_refuse_the_huge_header(tmp_path):
    p = forged(tmp_path / "x.npz", {"x.npy": npy_header(HUGE)})
    with pytest.raises(DataError, match="claims shape"):
        load_inputs(p, (10**6,))
    meta = {"format": ck.FORMAT, "format_version": 1, "config": {"name": "x"}}
    c = forged(
        tmp_path / "c.npz",
        {"__meta__.npy": npy(np.frombuffer(json.dumps(meta).encode(), np.uint8)), "weights/d/k.npy": npy_header(HUGE)},
    )
    with pytest.raises(CheckpointError, match=r"c\.npz: entry 'weights/d/k' claims shape"):
        ck.load(c)


def test_a_checkpoint_zip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRUN_MAX_ARRAY_BYTES", str(1 << 20))
    meta = {"format": ck.FORMAT, "format_version": 1, "config": {"name": "x"}}
    c = bomb(
        tmp_path / "c.npz",
        "weights/d/k.npy",
        8,
        {"__meta__.npy": npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))},
    )
    with pytest.raises(CheckpointError, match="more than the 1 MiB allowed"):
        ck.load(c)
