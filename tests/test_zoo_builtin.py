"""The shipped weights of the built-in entries reach what their zoo.yaml records.

They were trained by ``scripts/train_zoo_entry.py`` on the bundled training split only;
here they are evaluated, through ``dlsoft.zoo.load``, on the bundled held-out split.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dlsoft import zoo
from dlsoft.backend import to_numpy

ROOT = Path(__file__).resolve().parent.parent


def accuracy(net, images: np.ndarray, labels: np.ndarray, scale: float) -> float:
    correct = 0
    for start in range(0, len(labels), 250):
        batch = images[start:start + 250].astype(np.float32) * np.float32(scale)
        prob = to_numpy(net.forward(data=batch)["prob"])
        correct += int((prob.argmax(axis=1) == labels[start:start + 250]).sum())
    return correct / len(labels)


@pytest.mark.parametrize("name, floor", [("lenet_mnist", 0.965), ("mlp_digits", 0.90)])
def test_shipped_weights_reproduce_the_recorded_metric(name, floor):
    from dlsoft.data.digits import load_digits

    entry = zoo.get_entry(name)
    assert zoo.weights_status(entry) == "shipped"  # present and matching its sha256
    [metric] = entry.metrics
    images, labels = load_digits("test")
    assert metric["name"] == "accuracy"
    assert metric["data"] == f"bundled digits test split ({len(labels):,} images)"
    assert metric["value"] >= floor
    assert entry.meta["produced_by"]["command"].startswith(f"python scripts/train_zoo_entry.py {name}")
    assert entry.meta["produced_by"]["training_data"].startswith("bundled digits training split only")

    net = zoo.load(name)
    assert net.phase == "TEST" and "prob" in net.outputs
    scale = entry.meta["input"]["preprocessing"]["scale"]
    assert scale == 0.00390625
    assert abs(accuracy(net, images, labels, scale) - metric["value"]) <= 1e-3


def test_train_script_retrains_an_entry_copy_and_updates_its_record(tmp_path):
    spec = importlib.util.spec_from_file_location("train_zoo_entry", ROOT / "scripts" / "train_zoo_entry.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    copy = tmp_path / "mlp_digits"
    zoo.copy_entry("mlp_digits", copy, weights=False)
    meta = script.train("mlp_digits", iterations=30, seed=3, folder=copy)
    assert meta["produced_by"]["iterations"] == 30
    assert "--iterations 30 --seed 3" in meta["produced_by"]["command"]
    retrained = zoo.get_entry(str(copy))
    assert 0.0 <= retrained.metrics[0]["value"] <= 1.0
    assert zoo.local_path(retrained, "weights") == copy / "mlp_digits.caffemodel"  # sha256 matches
    assert (zoo.BUILTIN_DIR / "mlp_digits" / "zoo.yaml").read_text() != (copy / "zoo.yaml").read_text()
