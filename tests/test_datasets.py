"""The user's own data (npz, csv), synthetic regression, splits, normalisation and augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlrun import api
from dlrun.config.loader import from_plain
from dlrun.config.schema import parse_config
from dlrun.data import augment, normalize, splits
from dlrun.data.dataset import Split, load_dataset
from dlrun.data.pipeline import Batches
from dlrun.engine.backend import CPU
from dlrun.errors import ConfigError, DataError


def config(data: dict, layers: list, loss: str, metrics: list | None = None, epochs: int = 3, lr: float = 0.01) -> dict:
    return {
        "name": "t",
        "seed": 3,
        "data": data,
        "model": {"layers": layers},
        "loss": loss,
        "optimizer": {"type": "adam", "learning_rate": lr},
        "metrics": metrics or [],
        "training": {"epochs": epochs, "batch_size": 16},
    }


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated classes in 4 features, with large offsets (standardisation matters)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 3]], np.float32)
    x = centres[y] + 0.3 * rng.standard_normal((n, 4)).astype(np.float32)
    return x * np.float32(50) + np.float32(1000), y


def write_csv(path: Path, x: np.ndarray, target: list, header: bool = True, name: str = "label") -> Path:
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + [name])] if header else []
    lines += [",".join([f"{v:.6g}" for v in row] + [str(t)]) for row, t in zip(x, target)]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- npz -----------------------------------------------------------------------------------------
def test_npz_classification_trains_and_evaluates(tmp_path):
    x, y = blobs(240)
    np.savez(tmp_path / "d.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    cfg = config(
        {"dataset": "npz", "path": str(tmp_path / "d.npz"), "validation_split": 0.2, "normalize": "standardize"},
        [{"Dense": {"units": 8, "activation": "relu"}}, {"Dense": {"units": 3, "activation": "softmax"}}],
        "sparse_categorical_crossentropy",
        ["accuracy"],
        epochs=8,
    )
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert result.metrics["test"]["accuracy"] > 0.9
    scores = api.evaluate(result.run_dir / "checkpoints" / "last.npz")
    assert scores["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    # predict standardises raw inputs with the stored statistics (raw ones are around 1000).
    np.savez(tmp_path / "in.npz", x=x[200:220])
    rows = api.predict(result.run_dir / "checkpoints" / "last.npz", tmp_path / "in.npz", top_k=1)
    assert np.mean([int(r[0][0]) == t for r, t in zip(rows, y[200:220])]) > 0.9


def test_input_normalization_follows_training():
    from dlrun.data.dataset import input_normalization

    stats = {"mean": [1.0, 2.0], "std": [3.0, 4.0]}
    assert input_normalization({"dataset": "csv", "statistics": stats}, np.float32).mean == [1.0, 2.0]
    assert input_normalization({"dataset": "cifar10", "normalize": "auto"}, np.uint8).scale == 1 / 255
    assert input_normalization({"dataset": "cifar10", "normalize": "auto"}, np.float32).kind == "none"
    assert input_normalization({"dataset": "npz", "normalize": "none", "statistics": stats}, np.uint8).kind == "none"
    with pytest.raises(DataError, match="no data.statistics"):
        input_normalization({"dataset": "npz", "normalize": "standardize"}, np.float32)


def test_npz_regression_with_mse_and_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5], np.float32) + 0.05 * rng.standard_normal(300).astype(np.float32)
    np.savez(tmp_path / "r.npz", x_train=x, y_train=y)  # no test set: test_split makes one
    cfg = config(
        {"dataset": "npz", "path": str(tmp_path / "r.npz"), "task": "regression", "test_split": 0.2},
        [{"Dense": {"units": 1}}],
        "mse",
        ["mae"],
        epochs=10,
        lr=0.05,
    )
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert result.metrics["test"]["loss"] < 0.05
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_npz_problems_are_data_errors(tmp_path):
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1))
    with pytest.raises(DataError, match="pickle"):
        load_dataset({"dataset": "npz", "path": str(tmp_path / "obj.npz"), "task": "classification"}, 0)
    np.savez(tmp_path / "nolabels.npz", x_train=np.zeros((3, 2)))
    with pytest.raises(DataError, match="lacks y_train"):
        load_dataset({"dataset": "npz", "path": str(tmp_path / "nolabels.npz"), "task": "classification"}, 0)
    np.savez(tmp_path / "float.npz", x_train=np.zeros((3, 2)), y_train=np.array([0.5, 1, 2]))
    with pytest.raises(DataError, match="task: regression"):
        load_dataset({"dataset": "npz", "path": str(tmp_path / "float.npz"), "task": "classification"}, 0)
    with pytest.raises(DataError, match="not a file"):
        load_dataset({"dataset": "npz", "path": str(tmp_path / "missing.npz"), "task": "classification"}, 0)
    (tmp_path / "table.csv").write_text("a,b,y\n1,2,0\n")
    with pytest.raises(DataError, match="is not an .npz file") as err:
        load_dataset({"dataset": "npz", "path": str(tmp_path / "table.csv"), "task": "classification"}, 0)
    assert "pickle" not in str(err.value)


# -- csv -----------------------------------------------------------------------------------------
def test_csv_classification_with_string_labels_trains(tmp_path):
    x, y = blobs(200, seed=2)
    names = np.array(["setosa", "versicolor", "virginica"])
    path = write_csv(tmp_path / "iris.csv", x, names[y].tolist(), name="species")
    cfg = config(
        {"dataset": "csv", "path": str(path), "target": "species", "test_split": 0.25, "stratify": True},
        [{"Dense": {"units": 3, "activation": "softmax"}}],
        "categorical_crossentropy",
        ["accuracy"],
        epochs=10,
    )
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert result.metrics["test"]["accuracy"] > 0.9
    data = load_dataset(api.as_config(cfg).resolved["data"], 3)
    assert data.class_names == names.tolist() and data.num_classes == 3 and data.input_shape == (4,)
    report = api.evaluate_report(result.run_dir / "checkpoints" / "last.npz")
    assert report["class_names"] == names.tolist()


def test_csv_regression_with_mse_without_header(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (240, 3)).astype(np.float32)
    t = 2 * x[:, 0] - x[:, 2] + 0.5
    path = write_csv(tmp_path / "r.csv", x * 10 + 100, [f"{v:.6f}" for v in t], header=False)
    cfg = config(
        {"dataset": "csv", "path": str(path), "target": -1, "task": "regression", "test_split": 0.2},
        [{"Dense": {"units": 1}}],
        "mse",
        epochs=10,
        lr=0.05,
    )
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert result.metrics["test"]["loss"] < 0.01
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert len(saved["data"]["statistics"]["mean"]) == 3  # standardised by default


def test_csv_errors_name_row_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,label\n1,2,0\n3,,1\n")
    with pytest.raises(DataError, match=r"row 3, column 'b'"):
        load_dataset({"dataset": "csv", "path": str(p), "target": "label", "task": "classification"}, 0)
    with pytest.raises(DataError, match="did you mean 'label'"):
        load_dataset({"dataset": "csv", "path": str(p), "target": "lable", "task": "classification"}, 0)
    p.write_text("1;2;0\n3;4;1\n")  # no header, ';' separated
    data = load_dataset(
        {"dataset": "csv", "path": str(p), "target": 2, "task": "classification", "normalize": "none"}, 0
    )
    np.testing.assert_array_equal(data.train.x, [[1, 2], [3, 4]])
    with pytest.raises(DataError, match="no header"):
        load_dataset({"dataset": "csv", "path": str(p), "target": "label", "task": "classification"}, 0)


def test_dataset_keys_are_checked_in_the_config():
    base = config({"dataset": "cifar10", "target": "x"}, ["Flatten"], "mse")
    with pytest.raises(ConfigError, match="'target' only applies to the csv dataset"):
        parse_config(from_plain(base))
    base["data"] = {"dataset": "csv", "path": "t.csv"}
    with pytest.raises(ConfigError, match="needs data.target"):
        parse_config(from_plain(base))
    base["data"] = {"dataset": "cifar10", "augmentation": [{"RandomFlip": {"mode": "sideways"}}]}
    with pytest.raises(ConfigError, match="mode must be one of"):
        parse_config(from_plain(base))
    base["data"] = {"dataset": "cifar10", "augmentation": ["RandomFlipp"]}
    with pytest.raises(ConfigError, match="did you mean 'RandomFlip'"):
        parse_config(from_plain(base))
    base["data"] = {"dataset": "synthetic", "path": "x"}
    with pytest.raises(ConfigError, match="'path' only applies"):
        parse_config(from_plain(base))


# -- synthetic regression --------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["mse", "mae", "mape"])
def test_synthetic_regression_trains_with(loss, tmp_path):
    cfg = config(
        {
            "dataset": "synthetic",
            "task": "regression",
            "samples": 400,
            "features": 8,
            "noise": 0.05,
            "validation_split": 0.2,
        },
        [{"Dense": {"units": 16, "activation": "relu"}}, {"Dense": {"units": 1}}],
        loss,
        ["mse"] if loss != "mse" else ["mae"],
        epochs=5,
    )
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert all(np.isfinite(v) for v in result.history["val_loss"])
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]
    scores = api.evaluate(result.run_dir / "checkpoints" / "last.npz")
    assert scores["loss"] == pytest.approx(result.metrics["test"]["loss"], rel=1e-5)


# -- standardisation ---------------------------------------------------------------------------------
def test_standardisation_uses_the_training_split_only_and_evaluate_reuses_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    x_tr = rng.normal(10, 2, (100, 2)).astype(np.float32)
    x_te = rng.normal(-50, 9, (40, 2)).astype(np.float32)  # a very different test set
    y_tr, y_te = (x_tr[:, 0] > 10).astype(np.int64), (x_te[:, 0] > -50).astype(np.int64)
    np.savez(tmp_path / "s.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    data_cfg = {"dataset": "npz", "path": str(tmp_path / "s.npz"), "validation_split": 0.3, "normalize": "standardize"}
    cfg = config(
        data_cfg, [{"Dense": {"units": 1, "activation": "sigmoid"}}], "binary_crossentropy", ["accuracy"], epochs=2
    )
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    data = load_dataset(
        {**api.as_config(cfg).resolved["data"]},
        3,
        split_rng=__import__("dlrun.engine.random", fromlist=["streams"]).streams(3).split,
    )
    np.testing.assert_allclose(data.normalization.mean, data.train.x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(data.normalization.std, data.train.x.std(axis=0), rtol=1e-4)
    assert len(data.train) == 70 and not np.allclose(data.normalization.mean, x_tr.mean(axis=0))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["statistics"]
    np.testing.assert_allclose(saved["mean"], data.normalization.mean)
    # evaluate takes the statistics from the checkpoint: recomputing them is not even possible here.
    monkeypatch.setattr(normalize, "channel_statistics", lambda *a: pytest.fail("statistics recomputed"))
    scores = api.evaluate(result.run_dir / "checkpoints" / "last.npz")
    assert scores["loss"] == pytest.approx(result.metrics["test"]["loss"], rel=1e-5)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert scores["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_channel_statistics_match_numpy_and_stay_uint8():
    x = np.random.default_rng(0).integers(0, 256, (500, 8, 8, 3), dtype=np.uint8)
    mean, std = normalize.channel_statistics(x, rows=1000)  # several chunks
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(std, x.reshape(-1, 3).std(axis=0), rtol=1e-8)
    norm = normalize.Normalization("standardize", mean=mean, std=std)
    out = norm(x[:10], np, np.float32)
    assert out.dtype == np.float32 and x.dtype == np.uint8
    np.testing.assert_allclose(out, (x[:10] - np.array(mean)) / np.array(std), rtol=1e-4, atol=1e-5)
    assert normalize.channel_statistics(np.full((4, 2), 7.0, np.float32))[1] == [1.0, 1.0]


# -- splits --------------------------------------------------------------------------------------------
def test_stratified_split_keeps_class_proportions():
    y = np.array([0] * 90 + [1] * 10 + [2] * 50)
    keep, held = splits.holdout(len(y), 0.2, np.random.default_rng(0), y)
    assert len(held) == 30 and sorted(np.concatenate([keep, held]).tolist()) == list(range(150))
    assert np.bincount(y[held]).tolist() == [18, 2, 10]
    keep2, held2 = splits.holdout(len(y), 0.2, np.random.default_rng(0), y)
    np.testing.assert_array_equal(held, held2)  # seeded
    plain_keep, plain_held = splits.holdout(len(y), 0.2, np.random.default_rng(0))
    order = np.random.default_rng(0).permutation(150)  # the split of earlier versions
    np.testing.assert_array_equal(plain_held, order[:30])
    np.testing.assert_array_equal(plain_keep, order[30:])


def test_stratify_through_load_dataset():
    data = load_dataset(
        {
            "dataset": "synthetic",
            "samples": 300,
            "features": 4,
            "classes": 3,
            "task": "classification",
            "noise": 0.1,
            "validation_split": 0.2,
            "stratify": True,
        },
        0,
    )
    full = np.bincount(np.concatenate([data.train.y, data.val.y]), minlength=3) / 300
    assert np.abs(np.bincount(data.val.y, minlength=3) / len(data.val) - full).max() < 0.01
    with pytest.raises(DataError, match="stratify needs class labels"):
        load_dataset(
            {
                "dataset": "synthetic",
                "samples": 50,
                "features": 4,
                "classes": 1,
                "task": "regression",
                "noise": 0.1,
                "validation_split": 0.2,
                "stratify": True,
            },
            0,
        )


# -- augmentation ----------------------------------------------------------------------------------------
def images(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 10, 3), dtype=np.uint8)


def augmenter(specs: list, seed: int = 1) -> augment.Augmenter:
    return augment.augmenter(specs, seed, (8, 10, 3))


def test_flip_gives_the_image_or_its_mirror():
    x = images()
    aug = augmenter([{"RandomFlip": {"mode": "horizontal"}}])
    out = aug.geometric_batch(aug.rng(0, 0), x, np)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
    kept = [np.array_equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    v = augmenter([{"RandomFlip": {"mode": "vertical"}}]).geometric_batch(aug.rng(0, 0), x, np)
    assert all(np.array_equal(o, i) or np.array_equal(o, i[::-1]) for o, i in zip(v, x))


def test_crop_with_padding_is_a_shift_with_zero_fill():
    x = images(32)
    aug = augmenter([{"RandomCrop": {"padding": 2}}])
    out = aug.geometric_batch(aug.rng(3, 1), x, np)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for o, p in zip(out, padded):
        windows = [p[i : i + 8, j : j + 10] for i in range(5) for j in range(5)]
        assert any(np.array_equal(o, w) for w in windows)


def test_translation_reflect_matches_numpy_symmetric_padding():
    x = images(8)
    aug = augmenter([{"RandomTranslation": {"height_factor": 0.25, "width_factor": 0.2}}])
    out = aug.geometric_batch(aug.rng(0, 0), x, np)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="symmetric")  # Keras "reflect"
    for o, p in zip(out, padded):
        assert any(np.array_equal(o, p[i : i + 8, j : j + 10]) for i in range(5) for j in range(5))


def test_photometric_stay_in_range_and_everything_is_seeded():
    x = images().astype(np.float32)
    aug = augmenter(
        [
            {"RandomBrightness": {"factor": 0.5}},
            {"RandomContrast": {"factor": 0.5}},
            {"RandomFlip": {}},
            {"RandomCrop": {}},
        ]
    )
    a = aug.photometric_batch(aug.rng(2, 5), x, np)
    assert a.min() >= 0 and a.max() <= 255 and not np.allclose(a, x)
    np.testing.assert_array_equal(a, aug.photometric_batch(aug.rng(2, 5), x, np))
    assert not np.allclose(a, aug.photometric_batch(aug.rng(2, 6), x, np))
    g = aug.geometric_batch(aug.rng(2, 5), images(), np)
    np.testing.assert_array_equal(
        g, augmenter(aug_specs := [{"RandomFlip": {}}, {"RandomCrop": {}}]).geometric_batch(aug.rng(2, 5), images(), np)
    )
    assert not np.array_equal(
        g, augmenter(aug_specs, seed=2).geometric_batch(augmenter(aug_specs, seed=2).rng(2, 5), images(), np)
    )


def test_augmentation_only_for_training_batches():
    x = images(20)
    data = load_dataset(
        {"dataset": "synthetic", "samples": 20, "features": 2, "classes": 2, "task": "classification", "noise": 0.0}, 0
    )
    data.train = Split(x, np.zeros(20, np.int64))
    data.input_shape = x.shape[1:]
    data.augmenter = augmenter([{"RandomFlip": {"mode": "horizontal"}}, {"RandomBrightness": {"factor": 0.3}}])
    data.normalization = normalize.Normalization("scale", scale=1 / 255)
    plain = next(iter(data.batches(data.train, 20, CPU).epoch()))[0]
    np.testing.assert_allclose(plain, x.astype(np.float32) / 255, rtol=1e-6)
    trained = next(iter(data.batches(data.train, 20, CPU, training=True).epoch(epoch=0)))[0]
    assert trained.dtype == np.float32 and not np.allclose(trained, plain)
    assert data.train.x.dtype == np.uint8 and np.array_equal(data.train.x, x)  # the data is untouched


def test_augmentation_needs_images():
    with pytest.raises(DataError, match="applies to images"):
        load_dataset(
            {
                "dataset": "synthetic",
                "samples": 20,
                "features": 2,
                "classes": 2,
                "task": "classification",
                "noise": 0.0,
                "augmentation": ["RandomFlip"],
            },
            0,
        )


def test_batches_accept_a_bare_scale_factor():
    x = images(4)
    out = next(iter(Batches(Split(x, np.zeros(4)), 4, CPU, 1 / 255).epoch()))[0]
    np.testing.assert_allclose(out, x / 255, rtol=1e-6)
