"""`dlrun export` and `dlrun predict --output`: ONNX graphs that onnxruntime runs to dlrun's outputs
(within 1e-5) for every layer dlrun has, safetensors weights read back, and nothing half-written.

Models are small YAML configs with seeded random weights (BatchNormalization's moving statistics
too), so the tests need no training and no dataset files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dlrun import api
from dlrun.api.inference import load_model
from dlrun.cli import app
from dlrun.errors import DlrunError
from dlrun.graph.layer import Layer
from dlrun.graph.model import Model, Node
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training import evaluation

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from dlrun.interop import onnx_export  # noqa: E402  (after the skips: it needs onnx)

runner = CliRunner()
TOL = 1e-5

BASE = """
name: {name}
seed: 1
data: {{dataset: synthetic, samples: 64, features: 6, classes: 3}}
loss: {loss}
optimizer: adam
"""

# name -> (model section, loss)
MODELS = {
    "mlp": (
        """
        input_shape: [6]
        layers:
          - Dense: {units: 16, activation: relu}
          - Dense: {units: 8, activation: tanh}
          - Dense: {units: 3, activation: softmax}
        """,
        "sparse_categorical_crossentropy",
    ),
    # the seed CNN: Conv same + BN + MaxPool + Dropout + Flatten + Dense
    "seed_cnn": (
        """
        input_shape: [12, 12, 1]
        layers:
          - Conv2D: {filters: 6, kernel_size: 3, padding: same, activation: relu}
          - BatchNormalization
          - MaxPooling2D: {pool_size: 2}
          - Dropout: {rate: 0.25}
          - Flatten
          - Dense: {units: 16, activation: relu}
          - Dense: {units: 3, activation: softmax}
        """,
        "sparse_categorical_crossentropy",
    ),
    "strided_cnn": (
        """
        input_shape: [15, 13, 2]
        layers:
          - Conv2D: {filters: 5, kernel_size: 3, strides: 2, activation: relu}
          - Conv2D: {filters: 4, kernel_size: [3, 2], strides: [2, 1], padding: valid, activation: relu}
          - Flatten
          - Dense: {units: 3, activation: softmax}
        """,
        "sparse_categorical_crossentropy",
    ),
    "lenet": (
        """
        input_shape: [12, 12, 1]
        layers:
          - ZeroPadding2D: {padding: 2}
          - Conv2D: {filters: 4, kernel_size: 5, activation: tanh}
          - AveragePooling2D: {pool_size: 2}
          - Conv2D: {filters: 6, kernel_size: 3, activation: tanh}
          - AveragePooling2D: {pool_size: 2}
          - Flatten
          - Dense: {units: 12, activation: tanh}
          - Dense: {units: 3, activation: softmax}
        """,
        "sparse_categorical_crossentropy",
    ),
    "residual": (
        """
        input_shape: [10, 10, 3]
        layers:
          - Conv2D: {name: stem, filters: 4, kernel_size: 3, padding: same, use_bias: false}
          - BatchNormalization: {name: stem_bn}
          - ReLU: {name: stem_relu}
          - Conv2D: {name: res_conv, filters: 4, kernel_size: 3, padding: same}
          - BatchNormalization: {name: res_bn}
          - Add: {name: res_add, inputs: [stem_relu, res_bn]}
          - ReLU: {name: res_out}
          - MaxPooling2D: {name: pool}
          - Conv2D: {name: branch_a, filters: 3, kernel_size: 1, activation: relu, inputs: pool}
          - Conv2D: {name: branch_b, filters: 5, kernel_size: 3, padding: same, activation: relu, inputs: pool}
          - Concatenate: {name: branches, inputs: [branch_a, branch_b]}
          - GlobalAveragePooling2D: {name: gap}
          - GlobalMaxPooling2D: {name: gmp, inputs: branches}
          - Concatenate: {name: pooled, inputs: [gap, gmp]}
          - Dense: {name: scores, units: 3, activation: softmax}
        """,
        "sparse_categorical_crossentropy",
    ),
    "leaky_sigmoid": (
        """
        input_shape: [6]
        layers:
          - Dense: {units: 12}
          - LeakyReLU: {negative_slope: 0.3}
          - Dense: {units: 8, activation: leaky_relu}
          - Dense: {units: 1, activation: sigmoid}
        """,
        "binary_crossentropy",
    ),
    # an image out: the output is made in NCHW and transposed back under the output layer's name
    "conv_output": (
        """
        input_shape: [8, 8, 3]
        layers:
          - Conv2D: {filters: 4, kernel_size: 3, padding: same, activation: relu}
          - Conv2D: {name: pixels, filters: 3, kernel_size: 1, activation: softmax}
        """,
        "categorical_crossentropy",
    ),
    # every other layer, activation and option, on one graph (same pooling counts no padded pixel)
    "zoo": (
        """
        input_shape: [9, 9, 2]
        layers:
          - Conv2D: {name: dil, filters: 4, kernel_size: 3, padding: same, dilation_rate: 2, activation: elu}
          - AveragePooling2D: {name: avg_same, pool_size: 2, padding: same}
          - MaxPooling2D: {name: max_same, pool_size: 3, strides: 1, padding: same, inputs: dil}
          - Subtract: {name: sub, inputs: [avg_same, avg_same]}
          - UpSampling2D: {name: up, size: [2, 3], inputs: avg_same}
          - Conv2D: {name: c2, filters: 4, kernel_size: 2, strides: [2, 3], activation: gelu}
          - Conv2D: {name: c3, filters: 4, kernel_size: 1, activation: swish, inputs: c2}
          - Multiply: {name: mul, inputs: [c2, c3]}
          - Average: {name: avg3, inputs: [c2, c3, mul]}
          - Maximum: {name: mx, inputs: [avg3, c2]}
          - Minimum: {name: mn, inputs: [mx, c3, avg3]}
          - Add: {name: add3, inputs: [mn, sub, c2]}
          - SpatialDropout2D: {name: sdrop, rate: 0.5}
          - LayerNormalization: {name: ln_c}
          - BatchNormalization: {name: bn_h, axis: 1}
          - ReLU: {name: relu6, max_value: 6.0}
          - ReLU: {name: relu_full, max_value: 2.0, negative_slope: 0.1, threshold: 0.5, inputs: max_same}
          - ELU: {name: elu_l, alpha: 0.7}
          - GlobalMaxPooling2D: {name: gmax_keep, keepdims: true}
          - Flatten: {name: flat_keep}
          - Softmax: {name: sm_w, axis: 2, inputs: relu6}
          - Activation: {name: act_sig, activation: sigmoid}
          - Reshape: {name: rs, target_shape: [-1, 4]}
          - LayerNormalization: {name: ln_2, axis: [1, 2]}
          - Flatten: {name: flat}
          - Concatenate: {name: cat, inputs: [flat, flat_keep]}
          - Dense: {name: d1, units: 10, use_bias: false}
          - Activation: {name: act_tanh, activation: tanh}
          - Activation: {name: act_lin, activation: linear}
          - Dropout: {name: drop, rate: 0.1}
          - Dense: {name: out, units: 3}
          - Softmax: {name: probs}
        """,
        "categorical_crossentropy",
    ),
}


def _config(name: str) -> dict:
    model, loss = MODELS[name]
    cfg = yaml.safe_load(BASE.format(name=name, loss=loss))
    cfg["model"] = yaml.safe_load(model)
    return cfg


def _randomize(model: Model, seed: int = 0) -> None:
    """Seeded random weights, moving variances positive and away from 0."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, value in model.get_weights().items():
        w = rng.standard_normal(value.shape).astype(np.float32) * 0.5
        weights[key] = np.abs(w) + 0.5 if key.endswith("moving_variance") else w
    model.set_weights(weights)


def _setup(name: str, cfg: dict | None = None) -> api.Setup:
    setup = api.prepare(cfg or _config(name), device="cpu")
    _randomize(setup.model)
    return setup


def _inputs(model: Model, n: int, seed: int = 1) -> np.ndarray:
    shape = next(iter(model.inputs.values()))
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _session(proto) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_export.serialize(proto), providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _max_diff(name: str) -> float:
    setup = _setup(name)
    sess = _session(onnx_export.to_onnx(setup.model))
    worst = 0.0
    for n in (3, 17):  # two batch sizes through one session: the batch dimension is dynamic
        x = _inputs(setup.model, n, seed=n)
        got, want = _run(sess, x), setup.model.forward(x)
        assert got.shape == want.shape == (n, *setup.model.output_node.output_shape)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_matches_dlrun_forward(name):
    assert _max_diff(name) < TOL


def _nodes(proto, op_type: str) -> list:
    return [n for n in proto.graph.node if n.op_type == op_type]


def _attr(node, name: str):
    return onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == name))


def test_graph_versions_names_and_dynamic_batch():
    setup = _setup("residual")
    proto = onnx_export.to_onnx(setup.model)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == onnx_export.IR_VERSION == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    [inp], [out] = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "scores")  # the model's input, the output layer's name
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 10, 10, 3]  # NHWC, as the model takes it
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 3]
    image = onnx_export.to_onnx(_setup("conv_output").model)
    [out] = image.graph.output
    assert out.name == "pixels" and [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [
        "batch",
        8,
        8,
        3,
    ]
    assert image.graph.node[-1].op_type == "Transpose"  # back to NHWC, no Identity after it


@pytest.mark.parametrize("name", ["seed_cnn", "lenet", "residual", "zoo"])
def test_transposes_only_around_conv_and_pooling(name):
    proto = onnx_export.to_onnx(_setup(name).model)
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nchw_ops = {"Conv", "MaxPool", "AveragePool"}
    transposes = _nodes(proto, "Transpose")
    assert transposes
    for t in transposes:
        into_nchw = list(_attr(t, "perm")) == [0, 3, 1, 2]
        if into_nchw:  # NHWC -> NCHW: every reader is a Conv or a pooling
            assert {c.op_type for c in consumers[t.output[0]]} <= nchw_ops, t.name
        else:  # NCHW -> NHWC: of a tensor a Conv or pooling made (then maybe ops that keep the order)
            assert list(_attr(t, "perm")) == [0, 2, 3, 1], t.name
            src = producers[t.input[0]]
            while src.op_type not in nchw_ops:
                assert src.op_type not in {"Transpose", "Flatten", "Reshape", "Gemm"}, src.name
                src = producers[src.input[0]]
    # each tensor is transposed at most once per direction
    assert len({(t.input[0], tuple(_attr(t, "perm"))) for t in transposes}) == len(transposes)


def test_onnx_attributes_that_differ_from_the_defaults():
    proto = onnx_export.to_onnx(_setup("zoo").model)
    leaky = onnx_export.to_onnx(_setup("leaky_sigmoid").model)
    assert sorted(round(_attr(n, "alpha"), 6) for n in _nodes(leaky, "LeakyRelu")) == [0.2, 0.3]  # never 0.01
    [avg] = _nodes(proto, "AveragePool")
    assert _attr(avg, "count_include_pad") == 0 and _attr(avg, "auto_pad") == b"SAME_UPPER"
    [same] = _nodes(onnx_export.to_onnx(_setup("seed_cnn").model), "Conv")
    assert _attr(same, "auto_pad") == b"SAME_UPPER"
    # onnxruntime refuses auto_pad with dilations: dlrun's amounts, written out (5x5 effective kernel)
    dilated = next(c for c in _nodes(proto, "Conv") if c.output[0].startswith("dil"))
    assert list(_attr(dilated, "pads")) == [2, 2, 2, 2]
    [w_softmax, probs] = _nodes(proto, "Softmax")
    # dlrun's axis 2 (width) of a tensor held in NCHW is ONNX axis 3; the final softmax's is the last
    assert _attr(w_softmax, "axis") == 3 and _attr(probs, "axis") == 1
    kernel = next(i for i in proto.graph.initializer if i.name == "dil/kernel")
    assert list(kernel.dims) == [4, 2, 3, 3]  # OIHW


def test_input_normalization_is_part_of_the_graph(tmp_path):
    """A model trained on standardised inputs: onnxruntime on raw inputs gives `dlrun predict`'s outputs."""
    cfg = _config("mlp")
    cfg["data"].update(normalize="standardize", statistics={"mean": [1, 2, 3, 4, 5, 6], "std": [2, 3, 4, 5, 6, 7]})
    setup = _setup("mlp", cfg)
    path = _save(tmp_path / "std.npz", setup)
    x = _inputs(setup.model, 9) * 5 + 3
    np.savez(tmp_path / "x.npz", x=x)
    api.predict(path, tmp_path / "x.npz", output=tmp_path / "out.npy")
    api.export(path, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    want = np.load(tmp_path / "out.npy")
    assert np.abs(_run(sess, x) - want).max() < TOL
    assert np.abs(setup.model.forward(x) - want).max() > 0.01  # the normalization does matter


def test_uint8_input_scales_pixels_as_predict_does(tmp_path):
    cfg = _config("seed_cnn")
    cfg["data"] = {"dataset": "fashion_mnist"}
    cfg["model"]["input_shape"] = [28, 28, 1]
    setup = _setup("seed_cnn", cfg)
    path = _save(tmp_path / "fm.npz", setup)
    pixels = np.random.default_rng(3).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=pixels)
    api.predict(path, tmp_path / "x.npz", output=tmp_path / "out.npy")
    api.export(path, tmp_path / "u8.onnx", uint8_input=True)
    api.export(path, tmp_path / "f32.onnx")
    want = np.load(tmp_path / "out.npy")
    u8 = ort.InferenceSession(str(tmp_path / "u8.onnx"), providers=["CPUExecutionProvider"])
    assert u8.get_inputs()[0].type == "tensor(uint8)"
    assert np.abs(_run(u8, pixels) - want).max() < TOL
    f32 = ort.InferenceSession(str(tmp_path / "f32.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(_run(f32, pixels.astype(np.float32) / 255) - want).max() < TOL  # floats: already scaled
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "u8.onnx")).metadata_props}
    assert yaml.safe_load(meta["class_names"])[0] == "T-shirt/top"


class _Cube(Layer):
    """A layer ONNX export has no form for."""

    def forward(self, x, training):
        return x**3


def test_a_layer_onnx_cannot_express_is_one_error_listing_all():
    layers = [_Cube(), _Cube()]
    nodes = [Node("cube_a", layers[0], ["input"]), Node("cube_b", layers[1], ["cube_a"])]
    model = Model({"input": (4,)}, nodes, "cube_b")
    with pytest.raises(DlrunError, match=r"2 layers of this model: cube_a \(_Cube\), cube_b \(_Cube\)"):
        onnx_export.to_onnx(model)


def _save(path, setup: api.Setup):
    ckpt_mod.save(path, ckpt_mod.Checkpoint(config=setup.config.resolved, weights=setup.model.get_weights()))
    return path


def test_export_failure_leaves_no_file(tmp_path, monkeypatch):
    path = _save(tmp_path / "zoo.npz", _setup("zoo"))
    monkeypatch.delitem(onnx_export.EMITTERS, "UpSampling2D")  # as if ONNX had no form for it
    monkeypatch.delitem(onnx_export.EMITTERS, "LayerNormalization")
    res = runner.invoke(app, ["export", str(path), "--format", "onnx", "-o", str(tmp_path / "zoo.onnx")])
    assert res.exit_code == 1
    assert "ONNX cannot express 3 layers of this model: up (UpSampling2D), ln_c (LayerNormalization)" in res.output
    assert "ln_2 (LayerNormalization)" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo.npz"]  # no file, no temporary


def test_export_refuses_bad_targets_and_formats(tmp_path):
    path = _save(tmp_path / "m.npz", _setup("mlp"))
    cases = [
        (["--format", "tflite", "-o", str(tmp_path / "m.tflite")], "--format must be one of onnx, keras, safetensors"),
        (["--format", "onnx", "-o", str(tmp_path)], "is a folder"),
        (["--format", "onnx", "-o", str(path)], "a file this command reads"),
        (["--format", "safetensors", "--uint8-input", "-o", str(tmp_path / "w")], "--format onnx only"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["export", str(path), *args])
        assert res.exit_code == 2 and message in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_export_replaces_an_existing_file(tmp_path):
    path = _save(tmp_path / "m.npz", _setup("mlp"))
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    res = runner.invoke(app, ["export", str(path), "--format", "onnx", "-o", str(target)])
    assert res.exit_code == 0, res.output
    onnx.checker.check_model(onnx.load(str(target)), full_check=True)


def test_predict_output_is_the_forward_pass_in_batches_and_the_onnx_export_matches(tmp_path, monkeypatch):
    """The 'checking exports' use case end to end through the command line."""
    setup = _setup("seed_cnn")
    path = _save(tmp_path / "cnn.npz", setup)
    batch = evaluation.inference_batch(setup.model)
    n = batch + 76  # more than one inference batch
    x = _inputs(setup.model, n)
    np.savez(tmp_path / "x.npz", x=x)
    seen: list[int] = []
    forward = Model.forward
    monkeypatch.setattr(Model, "forward", lambda self, xb, *a, **k: seen.append(len(xb)) or forward(self, xb, *a, **k))
    res = runner.invoke(app, ["predict", str(path), "-i", str(tmp_path / "x.npz"), "--output", str(tmp_path / "o.npy")])
    assert res.exit_code == 0, res.output
    assert seen == [batch, 76]
    assert res.output.count("\n") >= n and res.output.startswith("0: ")  # the top-k view, as before
    out = np.load(tmp_path / "o.npy")
    monkeypatch.setattr(Model, "forward", forward)
    np.testing.assert_allclose(out, setup.model.forward(x), rtol=0, atol=1e-6)
    assert out.shape == (n, 3) and out.dtype == np.float32

    res = runner.invoke(app, ["export", str(path), "--format", "onnx", "-o", str(tmp_path / "cnn.onnx")])
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(_run(sess, x) - out).max() < TOL


def test_predict_output_json_stdout_stays_json(tmp_path):
    setup = _setup("leaky_sigmoid")
    path = _save(tmp_path / "m.npz", setup)
    x = _inputs(setup.model, 5)
    np.savez(tmp_path / "x.npz", x=x)
    res = runner.invoke(
        app, ["predict", str(path), "-i", str(tmp_path / "x.npz"), "--json", "-o", str(tmp_path / "o.npy")]
    )
    assert res.exit_code == 0, res.output
    assert len(yaml.safe_load(res.stdout)) == 5 and "o.npy" in res.stderr
    assert np.load(tmp_path / "o.npy").shape == (5, 1)  # the sigmoid output as it is, not two columns


def test_predict_output_refuses_its_own_inputs_and_folders(tmp_path):
    setup = _setup("mlp")
    path = _save(tmp_path / "m.npz", setup)
    np.savez(tmp_path / "x.npz", x=_inputs(setup.model, 2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for target, message in ((tmp_path / "x.npz", "reads"), (path, "reads"), (tmp_path, "is a folder")):
        res = runner.invoke(app, ["predict", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(target)])
        assert res.exit_code == 2 and message in res.output, res.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_trained_run_folder_exports(tmp_path, synth_config):
    """A real run (standardised inputs, from training) through its folder, as evaluate accepts it."""
    cfg = yaml.safe_load(synth_config.read_text())
    cfg["data"]["normalize"] = "standardize"
    config = tmp_path / "std.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--progress", "plain"])
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "runs" / "synth").iterdir())
    x = np.random.default_rng(5).normal(2.0, 3.0, (40, 12)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    api.predict(run, tmp_path / "x.npz", output=tmp_path / "o.npy")
    assert api.export(run, tmp_path / "run.onnx").path == tmp_path / "run.onnx"
    sess = ort.InferenceSession(str(tmp_path / "run.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(_run(sess, x) - np.load(tmp_path / "o.npy")).max() < TOL


def test_safetensors_holds_every_weight_under_keras_names(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    keras_format = pytest.importorskip("dlrun.interop.keras_format")
    setup = _setup("seed_cnn")
    path = _save(tmp_path / "cnn.npz", setup)
    res = runner.invoke(app, ["export", str(path), "--format", "safetensors", "-o", str(tmp_path / "w.safetensors")])
    assert res.exit_code == 0, res.output
    loaded = st.load_file(str(tmp_path / "w.safetensors"))
    names = keras_format.keras_weight_names(setup.model)
    weights = setup.model.get_weights()
    assert set(loaded) == {names[k] for k in weights}
    for key, value in weights.items():
        np.testing.assert_array_equal(loaded[names[key]], value)


def test_export_leaves_the_checkpoint_untouched(tmp_path):
    """Exporting reads the checkpoint only: the file is byte-identical afterwards."""
    setup = _setup("residual")
    path = _save(tmp_path / "r.npz", setup)
    before = path.read_bytes()
    api.export(path, tmp_path / "r.onnx")
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["seed_cnn", "residual"])
def test_keras_export_reads_back_with_the_same_outputs(tmp_path, name):
    """`--format keras` writes through the Keras writer; dlrun's Keras reader gives the same predictions."""
    pytest.importorskip("h5py")
    setup = _setup(name)
    path = _save(tmp_path / "m.npz", setup)
    res = runner.invoke(app, ["export", str(path), "--format", "keras", "-o", str(tmp_path / "m.keras")])
    assert res.exit_code == 0, res.output
    api.import_model(tmp_path / "m.keras", tmp_path / "back.npz")
    x = _inputs(setup.model, 4)
    np.savez(tmp_path / "x.npz", x=x)
    api.predict(tmp_path / "back.npz", tmp_path / "x.npz", output=tmp_path / "o.npy")
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), setup.model.forward(x), rtol=0, atol=1e-6)


def test_keras_and_safetensors_exports_say_the_inputs_need_standardising(tmp_path):
    pytest.importorskip("h5py")
    cfg = _config("mlp")
    cfg["data"].update(normalize="standardize", statistics={"mean": [1] * 6, "std": [2] * 6})
    path = _save(tmp_path / "std.npz", _setup("mlp", cfg))
    for fmt, out in (("keras", "m.keras"), ("safetensors", "w.safetensors")):
        res = runner.invoke(app, ["export", str(path), "--format", fmt, "-o", str(tmp_path / out)])
        assert res.exit_code == 0 and "standardised inputs" in res.stderr and "mean=[1.0," in res.stderr, res.output
    res = runner.invoke(app, ["export", str(path), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0 and not res.stderr  # the graph standardises them itself


def test_an_imported_keras_model_exports_to_onnx(tmp_path):
    """A self-contained checkpoint from `dlrun import` (no input normalization) exports as any other."""
    pytest.importorskip("h5py")
    fixtures = Path(__file__).parent / "fixtures" / "keras" / "import"
    api.import_model(fixtures / "functional.keras", tmp_path / "imported.npz")
    setup, _ = load_model(tmp_path / "imported.npz")
    api.export(tmp_path / "imported.npz", tmp_path / "imported.onnx")
    sess = ort.InferenceSession(str(tmp_path / "imported.onnx"), providers=["CPUExecutionProvider"])
    x = _inputs(setup.model, 6)
    assert np.abs(_run(sess, x) - setup.model.forward(x)).max() < TOL
