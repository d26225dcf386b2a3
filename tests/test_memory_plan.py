"""The memory plan: forward-only nets share activation storage, outputs unchanged."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import NetDefinitionError
from dlsoft.netdef.graph import plan_memory

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "dlsoft" / "model_zoo" / "entries"
RESNET50 = ROOT.parent / "shared" / "caffe-wild" / "soeaver+caffe-model" / "cls" / "resnet" / "deploy_resnet50.prototxt"


def test_chain_needs_two_buffers_and_a_skip_keeps_its_source_alive():
    # a -> b -> c -> d: each layer reads one storage and writes the next.
    chain = [((), ("a",)), (("a",), ("b",)), (("b",), ("c",)), (("c",), ("d",))]
    plan = plan_memory(chain, dict.fromkeys("abcd", 10), pinned={"a", "d"})
    assert plan.own == {"a": 10, "d": 10} and len(plan.slots) == 2
    assert plan.slot_of["b"] != plan.slot_of["c"] and plan.unplanned == 40 and plan.planned == 40
    # x -> y -> z, then w = z + x: x lives until the last layer, so y and z cannot take its buffer.
    skip = [((), ("x",)), (("x",), ("y",)), (("y",), ("z",)), (("z", "x"), ("w",)), (("w",), ("v",))]
    plan = plan_memory(skip, {"x": 4, "y": 8, "z": 8, "w": 4, "v": 2}, pinned={"v"})
    assert len({plan.slot_of[k] for k in "xyz"}) == 3
    assert plan.slot_of["w"] == plan.slot_of["y"]  # y's buffer is free again once z is written
    assert plan.planned == 4 + 8 + 8 + 2


def _random_weights(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.data[...] = np.abs(rng.normal(0, 0.05, blob.shape)) + 0.01  # BatchNorm variances stay positive


def _planned_twin(path, **options):
    plain = dlsoft.Net(path, phase="TEST")
    planned = dlsoft.Net(path, phase="TEST", memory_plan=True, **options)
    _random_weights(plain)
    for name, blobs in plain.params.items():
        for mine, theirs in zip(planned.params[name], blobs):
            mine.data[...] = theirs.data
    return plain, planned


@pytest.mark.parametrize("path", [ZOO / "bvlc_googlenet/deploy.prototxt", RESNET50], ids=["googlenet", "resnet50"])
def test_planned_net_gives_the_same_outputs_in_at_most_half_the_memory(path):
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    plain, planned = _planned_twin(path)
    name = plain.inputs[0]
    x = np.random.default_rng(1).uniform(-1, 1, (1,) + plain.blobs[name].shape[1:]).astype(np.float32)
    expected = {k: v.copy() for k, v in plain.forward(**{name: x}).items()}
    for _ in range(2):  # a second pass sees buffers holding the first pass's values
        got = planned.forward(**{name: x})
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)
    plan = planned.memory_plan
    assert plan.planned <= plan.unplanned / 2, (plan.planned, plan.unplanned)
    # The summary reports both sizes; a plain net reports what the plan would give.
    assert "with the memory plan" in planned.summary() and "applied" in planned.summary()
    assert f"{plan.planned * 4 / 2**20:.2f} MiB" in plain.summary()


def test_reshape_plans_again_and_kept_blobs_keep_their_values():
    path = ZOO / "bvlc_googlenet/deploy.prototxt"
    plain, planned = _planned_twin(path, keep_blobs=["inception_3a/output"])
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    expected = plain.forward(blobs=["inception_3a/output"], data=x)
    got = planned.forward(blobs=["inception_3a/output"], data=x)  # batch 10 -> 2: reshape, plan again
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert planned.memory_plan.unplanned == plain.plan_memory().unplanned  # both now sized for batch 2
    with pytest.raises(NetDefinitionError, match="keep_blobs"):
        planned.forward(blobs=["conv1/7x7_s2"], data=x)
    with pytest.raises(NetDefinitionError, match="first layer"):
        planned.forward(start="pool1/3x3_s2")


def test_net_that_runs_backward_cannot_be_planned():
    with pytest.raises(NetDefinitionError, match="runs backward") as info:
        dlsoft.Net(ZOO / "lenet_mnist/train_val.prototxt", phase="TRAIN", memory_plan=True)
    assert "\n" not in str(info.value)
