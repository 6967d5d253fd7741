"""`dlrun schema`: a valid JSON Schema that accepts every shipped config and rejects structural mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dlrun.cli import app

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
# Mistakes only dlrun itself can see: value ranges checked by constructors, shapes, graph wiring,
# names inside arguments, duplicate YAML keys (JSON has no such thing).
SEMANTIC = {
    "activation_unknown",
    "dense_on_images_needs_flatten",
    "dropout_missing_rate",
    "dropout_rate_too_big",
    "duplicate_key",
    "graph_duplicate_name",
    "graph_unknown_input",
    "initializer_unknown",
    "learning_rate_negative",
    "loss_bad_argument",
    "reshape_mismatch",
    "units_zero",
}


@pytest.fixture(scope="module")
def validator():
    res = CliRunner().invoke(app, ["schema"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(validator, path):
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_resolved_configs_validate(validator, path):
    """The config.yaml a run writes (every argument spelled out, pairs as lists) is valid too."""
    from dlrun import api

    resolved = api.prepare(path, device="cpu").config.resolved
    assert [e.message for e in validator.iter_errors(json.loads(json.dumps(resolved)))] == []


BROKEN = sorted((ROOT / "tests" / "broken_configs").glob("*.yaml"))


@pytest.mark.parametrize(
    "path", [p for p in BROKEN if p.stem not in SEMANTIC and not p.stem.startswith("yaml_")], ids=lambda p: p.stem
)
def test_structural_mistakes_are_rejected(validator, path):
    assert list(validator.iter_errors(yaml.safe_load(path.read_text()))), path.stem


def test_names_match_case_insensitively(validator):
    cfg = {
        "data": {"dataset": "synthetic"},
        "model": {"layers": ["flatten", {"DENSE": {"units": 2}}]},
        "loss": "MSE",
        "optimizer": {"type": "Adam", "learning_rate": 0.1},
        "metrics": ["mae"],
    }
    assert list(validator.iter_errors(cfg)) == []
    cfg["optimizer"] = "adamm"
    assert list(validator.iter_errors(cfg))
