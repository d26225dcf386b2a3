"""transform_param: Caffe's order crop -> mirror -> (x - mean) * scale, seeded randomness."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from dlsoft.data.transform import Transformer
from dlsoft.errors import DataError
from dlsoft.netdef.io import write_blob
from dlsoft.protos import caffe_pb2

BATCH = np.random.default_rng(0).integers(0, 256, (4, 3, 6, 7)).astype(np.uint8)


def transform(text: str, phase="TEST", batch=BATCH, seed=0):
    param = text_format.Parse(text, caffe_pb2.TransformationParameter())
    t = Transformer(param, phase, batch.shape[1:], np.random.default_rng(seed))
    out = np.empty((len(batch), *t.out_shape), np.float32)
    t(batch, out)
    return out


def test_identity_and_scale():
    np.testing.assert_array_equal(transform(""), BATCH)
    np.testing.assert_allclose(transform("scale: 0.00390625"), BATCH / 256.0, rtol=1e-7)


def test_mean_values_then_scale():
    out = transform("mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5")
    expect = (BATCH - np.array([10, 20, 30]).reshape(1, 3, 1, 1)) * 0.5
    np.testing.assert_allclose(out, expect)
    np.testing.assert_allclose(transform("mean_value: 100"), BATCH - 100.0)


def test_mean_file_is_indexed_at_the_crop_position(tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, (1, 3, 6, 7)).astype(np.float32)
    write_blob(mean, tmp_path / "mean.binaryproto")
    out = transform(f'mean_file: "{tmp_path / "mean.binaryproto"}" crop_size: 4 scale: 2')
    # centre crop at TEST: offsets (6-4)//2 = 1 and (7-4)//2 = 1
    expect = (BATCH[:, :, 1:5, 1:5] - mean[:, :, 1:5, 1:5]) * 2
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_random_crop_and_mirror_at_train_are_seeded_windows():
    out = transform("crop_size: 3 mirror: true", phase="TRAIN", seed=5)
    again = transform("crop_size: 3 mirror: true", phase="TRAIN", seed=5)
    np.testing.assert_array_equal(out, again)
    windows_seen = set()
    for i in range(len(BATCH)):
        candidates = {}
        for top in range(4):
            for left in range(5):
                window = BATCH[i, :, top:top + 3, left:left + 3].astype(np.float32)
                candidates[(top, left, False)] = window
                candidates[(top, left, True)] = window[..., ::-1]
        match = [k for k, w in candidates.items() if np.array_equal(w, out[i])]
        assert match, f"example {i} is not a (mirrored) 3x3 window of its input"
        windows_seen.add(match[0])
    assert len(windows_seen) > 1  # offsets differ per example


def test_mirror_only_at_train():
    np.testing.assert_array_equal(transform("mirror: true", phase="TEST"), BATCH)
    flips = [np.array_equal(o, b[..., ::-1]) for o, b in zip(transform("mirror: true", "TRAIN", seed=3), BATCH)]
    keeps = [np.array_equal(o, b) for o, b in zip(transform("mirror: true", "TRAIN", seed=3), BATCH)]
    assert all(f or k for f, k in zip(flips, keeps))


def test_errors():
    with pytest.raises(DataError, match="2 mean_value.*3 channels"):
        transform("mean_value: 1 mean_value: 2")
    with pytest.raises(DataError, match="crop_size 9 is larger"):
        transform("crop_size: 9")
    with pytest.raises(DataError, match="mean_file not found: .*nope"):
        transform('mean_file: "nope.binaryproto"')
    with pytest.raises(DataError, match="not both"):
        transform('mean_file: "x" mean_value: 1')
