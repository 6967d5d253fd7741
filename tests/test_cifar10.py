"""CIFAR-10 from archives in the exact official binary format, and its download, on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun.cli import app
from dlrun.data import sources
from dlrun.data.dataset import load_dataset
from dlrun.data.datasets import cifar10
from dlrun.errors import DataError

runner = CliRunner()
NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]  # not the defaults


def planar_record(label: int, image: np.ndarray) -> bytes:
    """One record written the way the format describes it, pixel by pixel (independent of dlrun)."""
    out = bytearray([label])
    for channel in range(3):  # red plane, then green, then blue
        for row in range(32):
            for col in range(32):
                out.append(int(image[row, col, channel]))
    return bytes(out)


def make_archive(
    folder: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0, extra: dict | None = None
) -> tuple[Path, dict]:
    """`cifar-10-binary.tar.gz` with a few records per batch file, and the arrays it should load to."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (5 * per_batch + n_test, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    members = {
        f"data_batch_{i + 1}.bin": b"".join(
            planar_record(int(y[j]), x[j]) for j in range(i * per_batch, (i + 1) * per_batch)
        )
        for i in range(5)
    }
    members["test_batch.bin"] = b"".join(planar_record(int(y[j]), x[j]) for j in range(5 * per_batch, len(x)))
    members["batches.meta.txt"] = ("\n".join(NAMES) + "\n\n").encode()
    members["readme.html"] = b"<html></html>"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cifar10.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(cifar10.FOLDER)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        # The official archive does not list the batches in numeric order.
        for name in [
            "data_batch_4.bin",
            "readme.html",
            "test_batch.bin",
            "data_batch_2.bin",
            "batches.meta.txt",
            "data_batch_5.bin",
            "data_batch_1.bin",
            "data_batch_3.bin",
        ]:
            data = members[name]
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    n = 5 * per_batch
    return path, {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data anywhere dlrun looks: empty DLRUN_DATA and cache, no system folders."""
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "dlrun_data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DLRUN_OFFLINE", raising=False)
    monkeypatch.setattr(cifar10, "SYSTEM_DIRS", [])
    monkeypatch.setattr(sources, "BACKOFF_S", 0.0)  # retries without the wait
    return tmp_path


def check(loaded, expected) -> None:
    x_tr, y_tr, x_te, y_te, names = loaded
    assert x_tr.dtype == np.uint8 and x_tr.shape == expected["x_train"].shape
    np.testing.assert_array_equal(x_tr, expected["x_train"])
    np.testing.assert_array_equal(y_tr, expected["y_train"])
    np.testing.assert_array_equal(x_te, expected["x_test"])
    np.testing.assert_array_equal(y_te, expected["y_test"])
    assert names == NAMES


def test_round_trip_from_archive_and_extracted_folder(isolated):
    archive, expected = make_archive(isolated / "mine")
    check(cifar10.load(str(archive), allow_download=False), expected)  # data.path = the archive
    check(cifar10.load(str(isolated / "mine"), allow_download=False), expected)  # a folder holding it
    folder = cifar10.extract(archive, isolated / "unpacked")
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar10.FILES)  # readme.html not copied
    check(cifar10.load(str(isolated / "unpacked"), allow_download=False), expected)  # .../cifar-10-batches-bin
    check(cifar10.load(str(folder), allow_download=False), expected)  # the .bin files directly


def test_channel_order_is_planar_rgb_to_channels_last():
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    image[0, 1] = (1, 2, 3)
    record = bytes([7]) + bytes([10] * 1024) + bytes([20] * 1024) + bytes([30] * 1024)
    record = bytearray(record)
    record[1 + 1], record[1 + 1024 + 1], record[1 + 2048 + 1] = 1, 2, 3  # row 0, column 1 of each plane
    x, y = cifar10.parse_records(bytes(record), "one")
    assert y.tolist() == [7] and x.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(x[0], image)
    assert bytes(record) == cifar10.records(x, y) == planar_record(7, image)


def test_load_dataset_sets_class_names_and_keeps_uint8(isolated):
    make_archive(isolated / "dlrun_data" / "cifar10")
    data = load_dataset({"dataset": "cifar10", "validation_split": 0.2}, 0)
    assert data.class_names == NAMES and data.num_classes == 10 and data.input_shape == (32, 32, 3)
    assert data.train.x.dtype == np.uint8 and data.test.x.dtype == np.uint8
    assert len(data.train) + len(data.val) == 15
    fashion = (
        load_dataset({"dataset": "fashion_mnist"}, 0) if Path("/usr/share/datasets/fashion-mnist").is_dir() else None
    )
    if fashion is not None:
        assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[-1] == "Ankle boot"


def test_search_order(isolated):
    make_archive(isolated / "dlrun_data" / "cifar10", seed=1)
    where, searched = cifar10.find(None)
    assert where.path == isolated / "dlrun_data" / "cifar10" / cifar10.ARCHIVE and where.archive
    assert searched == [isolated / "dlrun_data" / "cifar10", isolated / "cache" / "dlrun" / "cifar10"]
    mine, _ = make_archive(isolated / "mine", seed=2)
    assert cifar10.find(str(isolated / "mine"))[0].path == mine  # data.path comes first
    cifar10.extract(mine, isolated / "dlrun_data" / "cifar10")
    assert not cifar10.find(None)[0].archive  # extracted beats the archive


def test_corrupt_files_are_reported(isolated):
    archive, _ = make_archive(isolated / "mine")
    folder = cifar10.extract(archive, isolated / "x")
    (folder / "data_batch_3.bin").write_bytes((folder / "data_batch_3.bin").read_bytes()[:-5])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        cifar10.load(str(folder), allow_download=False)
    (folder / "data_batch_3.bin").write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(DataError, match="label 12"):
        cifar10.load(str(folder), allow_download=False)
    truncated = isolated / "t" / cifar10.ARCHIVE
    truncated.parent.mkdir()
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        cifar10.load(str(truncated), allow_download=False)


def test_extraction_takes_only_the_expected_members(isolated):
    evil = {
        "../escape.txt": b"x",
        "/tmp/dlrun-absolute-escape.txt": b"x",
        f"{cifar10.FOLDER}/../../escape2.txt": b"x",
        f"{cifar10.FOLDER}/evil.bin": b"x",
    }
    archive, expected = make_archive(isolated / "a" / "b", extra=evil)
    dest = isolated / "a" / "b" / "dest"
    folder = cifar10.extract(archive, dest)
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar10.FILES)
    assert not list(isolated.rglob("escape*")) and not Path("/tmp/dlrun-absolute-escape.txt").exists()
    check(cifar10.load(str(dest), allow_download=False), expected)
    # An expected name that is a link, not a file, is not taken: the archive is then incomplete.
    linked = isolated / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as tar:
        info = tarfile.TarInfo(f"{cifar10.FOLDER}/data_batch_1.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="lacks"):
        cifar10.extract(linked, isolated / "linked")


# -- download ------------------------------------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False  # every answer, or (an int) that many first answers
    requests = 0

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        type(self).requests += 1
        if self.truncate is False or (self.truncate is not True and type(self).requests > self.truncate):
            return super().do_GET()
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))  # announces all of it ...
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])  # ... sends half, then hangs up
        self.close_connection = True


@pytest.fixture
def server(isolated, monkeypatch):
    """Serves an official-format archive from 127.0.0.1; URL and MD5 pointed at it."""
    archive, expected = make_archive(isolated / "served")
    handler = type("H", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(isolated / "served"), **k)
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(cifar10, "URL", f"http://127.0.0.1:{httpd.server_address[1]}/{cifar10.ARCHIVE}")
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    yield handler, expected
    httpd.shutdown()
    httpd.server_close()


def cache() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "dlrun" / "cifar10"


def nothing_left() -> None:
    left = [p for p in cache().rglob("*") if p.is_file()] if cache().exists() else []
    assert left == [], left
    assert cifar10.find(None)[0] is None


def test_download_verifies_extracts_and_is_found_next_time(server):
    _, expected = server
    seen = []
    check(cifar10.load(progress=lambda done, total: seen.append((done, total))), expected)
    assert seen and seen[-1][0] == seen[-1][1]
    assert (cache() / cifar10.ARCHIVE).is_file()
    assert cifar10.find(None)[0] == cifar10.Location(cache() / cifar10.FOLDER, False)
    assert not list(cache().rglob("*.part"))


def test_wrong_checksum_is_rejected_and_removed(server, monkeypatch):
    monkeypatch.setattr(cifar10, "MD5", "0" * 32)
    with pytest.raises(DataError) as info:
        cifar10.load()
    assert "MD5" in str(info.value) and "Looked in" in str(info.value)
    nothing_left()


def test_truncated_download_is_rejected_and_removed(server):
    handler, _ = server
    handler.truncate = True
    with pytest.raises(DataError) as info:
        cifar10.load()
    assert "truncated" in str(info.value) or "stopped after" in str(info.value)
    nothing_left()


def test_truncated_downloads_are_retried_a_bounded_number_of_times(server):
    handler, expected = server
    handler.truncate = True
    with pytest.raises(DataError, match="3 attempts"):
        cifar10.load()
    assert handler.requests == sources.ATTEMPTS == 3
    nothing_left()
    handler.requests, handler.truncate = 0, 2  # two truncated answers, then the whole file
    check(cifar10.load(), expected)
    assert handler.requests == 3


def test_a_checksum_mismatch_is_not_retried(server, monkeypatch):
    handler, _ = server
    monkeypatch.setattr(cifar10, "MD5", "0" * 32)
    with pytest.raises(DataError, match="MD5"):
        cifar10.load()
    assert handler.requests == 1


def test_refused_connections_are_retried_then_reported(isolated, monkeypatch):
    calls = []

    def refuse(url, timeout):
        calls.append(url)
        raise sources.urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(sources.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="Connection refused"):
        cifar10.load()
    assert len(calls) == 3


def test_stale_temporaries_of_killed_downloads_are_removed_first(server):
    _, expected = server
    cache().mkdir(parents=True)
    (cache() / cifar10.FOLDER).mkdir()
    old = time.time() - 2 * sources.STALE_S
    stale = [cache() / f".{cifar10.ARCHIVE}.k1ll3d.part", cache() / f".{cifar10.ARCHIVE}.x9.tmp"]
    stale.append(cache() / cifar10.FOLDER / ".data_batch_1.bin.a1.part")
    live = cache() / f".{cifar10.ARCHIVE}.l1ve.tmp"  # another process's download, still growing
    for p in [*stale, live]:
        p.write_bytes(b"half")
    for p in stale:
        os.utime(p, (old, old))
    check(cifar10.load(), expected)
    assert [p for p in stale if p.exists()] == [] and live.exists()


def test_truncated_file_served_whole_fails_the_checksum(server, isolated):
    served = isolated / "served" / cifar10.ARCHIVE
    served.write_bytes(served.read_bytes()[:-100])
    with pytest.raises(DataError, match="MD5"):
        cifar10.load()
    nothing_left()


def test_offline_switch_and_message(isolated, monkeypatch):
    monkeypatch.setenv("DLRUN_OFFLINE", "1")
    monkeypatch.setattr(cifar10, "URL", "http://127.0.0.1:9/never-contacted")
    with pytest.raises(DataError) as info:
        cifar10.load()
    text = str(info.value)
    for place in (isolated / "dlrun_data" / "cifar10", isolated / "cache" / "dlrun" / "cifar10"):
        assert str(place) in text
    assert "DLRUN_OFFLINE" in text and cifar10.ARCHIVE in text and "data_batch_1.bin" in text


CONFIG = """\
name: cifar10_mlp
data: {dataset: cifar10, validation_split: 0.1}
model:
  layers:
    - Flatten
    - Dense: {units: 16, activation: relu}
    - Dense: {units: 10, activation: softmax}
loss: sparse_categorical_crossentropy
metrics: [accuracy]
training: {epochs: 1}
"""


def test_train_without_the_data_fails_cleanly(isolated, monkeypatch):
    monkeypatch.setenv("DLRUN_OFFLINE", "1")
    cfg = isolated / "cifar10_mlp.yaml"
    cfg.write_text(CONFIG)
    runs = isolated / "runs"
    res = runner.invoke(app, ["train", str(cfg), "--runs-dir", str(runs), "--progress", "plain"])
    out = res.output
    assert res.exit_code == 1, out
    assert "Looked in" in out and cifar10.ARCHIVE in out and "data_batch_1.bin" in out
    assert "Traceback" not in out and not runs.exists()


@pytest.mark.skipif(any(Path(d).exists() for d in cifar10.SYSTEM_DIRS), reason="CIFAR-10 installed system-wide")
def test_train_without_the_data_as_a_real_process(tmp_path):
    cfg = tmp_path / "cifar10_mlp.yaml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "DLRUN_DATA": str(tmp_path / "d"), "XDG_CACHE_HOME": str(tmp_path / "c"), "DLRUN_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "train", str(cfg), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: the cifar10 dataset was not found")
    assert "Traceback" not in proc.stderr and "hint:" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_data_commands(server, isolated):
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "cifar10" in res.output and "not found" in res.output
    res = runner.invoke(app, ["data", "path", "cifar10"])
    assert res.exit_code == 0 and str(isolated / "dlrun_data" / "cifar10") in res.output
    assert "data_batch_1.bin" in res.output
    res = runner.invoke(app, ["data", "fetch", "cifar10"])
    assert res.exit_code == 0, res.output
    assert str(cache() / cifar10.FOLDER) in res.output
    res = runner.invoke(app, ["data", "list", "--json"])
    row = next(r for r in __import__("json").loads(res.output) if r["name"] == "cifar10")
    assert row["found"] == str(cache() / cifar10.FOLDER) and row["size"] > 0
    res = runner.invoke(app, ["data", "fetch", "cifar100"])
    assert res.exit_code == 1 and "cifar10" in res.output
    shutil.rmtree(cache())
