"""Helpers for the ONNX tests: random weights that keep activations in range, and the
comparison of onnxruntime's outputs with dlsoft's."""
from __future__ import annotations

import numpy as np


def randomize(net, seed: int = 0) -> None:
    """Random weights: fan-in scaled (no saturated softmax), positive BatchNorm statistics
    stored with a scale factor of 2 (so the export must divide by it)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            channels = blobs[0].shape
            blobs[0].data[...] = 2.0 * rng.normal(0, 0.2, channels)
            blobs[1].data[...] = 2.0 * rng.uniform(0.5, 1.5, channels)
            blobs[2].data[...] = 2.0
        elif layer.type == "Scale":
            for k, blob in enumerate(blobs):
                blob.data[...] = rng.uniform(0.5, 1.5, blob.shape) if k == 0 else rng.normal(0, 0.1, blob.shape)
        elif layer.type == "PReLU":
            blobs[0].data[...] = rng.uniform(0.1, 0.4, blobs[0].shape)
        else:
            for k, blob in enumerate(blobs):
                if k == 0 and len(blob.shape) >= 2:
                    fan_in = blob.count // blob.shape[0]
                    if layer.type == "Deconvolution":
                        fan_in = blob.count // blob.shape[1]
                    blob.data[...] = rng.normal(0, np.sqrt(1.0 / fan_in), blob.shape)
                else:
                    blob.data[...] = rng.uniform(0.5, 1.5, blob.shape) if layer.type == "Normalize" \
                        else rng.normal(0, 0.1, blob.shape)


def input_feeds(net, batch: int | None = None, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in net.inputs:
        shape = net.blobs[name].shape
        if batch is not None:
            shape = (batch,) + shape[1:]
        feeds[name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


def run_onnx(path, feeds, outputs=None) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """max |a - e| / max |e|: the error relative to the blob's scale."""
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    return float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-30))


def dlsoft_outputs(net, feeds, names) -> dict[str, np.ndarray]:
    net.forward(**feeds)
    return {name: np.array(net.blobs[name].data) for name in names}


def assert_matches(net, path, feeds, names, tolerance: float = 1e-4) -> dict[str, float]:
    """onnxruntime on ``path`` agrees with dlsoft's ``net`` on ``names`` to ``tolerance``."""
    expected = dlsoft_outputs(net, feeds, names)
    actual = run_onnx(path, feeds, names)
    errors = {name: relative_error(expected[name], actual[name]) for name in names}
    bad = {name: err for name, err in errors.items() if not err <= tolerance}
    assert not bad, f"relative errors above {tolerance}: {bad}"
    return errors
