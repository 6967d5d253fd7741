"""Fashion-MNIST search order and download, against a local HTTP server (no network)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from dlrun.data import sources
from dlrun.data.datasets import fashion_mnist
from dlrun.errors import DataError


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_files(tmp_path, monkeypatch):
    """Four small IDX .gz files in the official layout, with FILES' checksums pointed at them."""
    rng = np.random.default_rng(0)
    src = tmp_path / "server"
    src.mkdir()
    contents = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx(rng.integers(0, 10, 20)),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (5, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx(rng.integers(0, 10, 5)),
    }
    table = {}
    for name, raw in contents.items():
        (src / name).write_bytes(gzip.compress(raw))
        table[name] = (hashlib.md5((src / name).read_bytes()).hexdigest(), hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(fashion_mnist, "FILES", table)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [])
    monkeypatch.setattr(sources, "BACKOFF_S", 0.0)  # retries without the wait
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DLRUN_DATA", raising=False)
    return src


@pytest.fixture
def server(tiny_files, monkeypatch):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tiny_files), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(fashion_mnist, "MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield tiny_files
    httpd.shutdown()


def test_downloads_into_the_cache_and_verifies(server, tmp_path):
    seen = []
    x_tr, y_tr, x_te, y_te = fashion_mnist.load(progress=lambda done, total: seen.append((done, total)))
    assert x_tr.shape == (20, 28, 28, 1) and x_te.shape == (5, 28, 28, 1)
    cache = tmp_path / "cache" / "dlrun" / "fashion_mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(fashion_mnist.FILES)
    assert seen and seen[-1][0] == seen[-1][1]
    # Second load finds the cache: no server needed.
    assert fashion_mnist.find(None)[0] == cache


def test_corrupt_download_is_refused_and_removed(server, tmp_path, monkeypatch):
    bad = dict(fashion_mnist.FILES)
    bad["t10k-labels-idx1-ubyte.gz"] = ("0" * 32, bad["t10k-labels-idx1-ubyte.gz"][1])
    monkeypatch.setattr(fashion_mnist, "FILES", bad)
    with pytest.raises(DataError) as info:
        fashion_mnist.load()
    assert "MD5" in str(info.value) and "Looked in" in str(info.value)
    cache = tmp_path / "cache" / "dlrun" / "fashion_mnist"
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_offline_error_lists_places_and_files(tiny_files, monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "MIRROR", "http://127.0.0.1:9/")  # nothing listens on port 9
    with pytest.raises(DataError) as info:
        fashion_mnist.load()
    text = str(info.value)
    assert str(tmp_path / "cache" / "dlrun" / "fashion_mnist") in text
    assert "train-images-idx3-ubyte.gz" in text
    # A path the user named is the one place looked in: its error says what it lacks (issue 12).
    with pytest.raises(DataError) as info:
        fashion_mnist.load(user_path=str(tmp_path / "mine"))
    assert f"the data path {tmp_path / 'mine'} does not exist" in str(info.value)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_data_path_comes_first_and_content_is_verified(tiny_files, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for f in fashion_mnist.FILES:
        (mine / f).write_bytes((tiny_files / f).read_bytes())
    assert fashion_mnist.find(str(mine))[0] == mine
    # Same gzip container, other content: the SHA-256 of the content catches it.
    (mine / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(20, np.uint8))))
    with pytest.raises(DataError, match="SHA-256"):
        fashion_mnist.load(user_path=str(mine), allow_download=False)


def test_truncated_idx_is_reported():
    with pytest.raises(DataError, match="truncated|announces"):
        fashion_mnist.parse_idx(_idx(np.zeros((3, 2), np.uint8))[:-1], "x")
