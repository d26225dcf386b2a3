"""The Input layer: declared shapes, one per top or one for all."""
from __future__ import annotations

import numpy as np
import pytest

from dlsoft.errors import NetDefinitionError
from gradcheck import covers, run_layer

@covers("Input", "reference")
def test_input_shapes_one_per_top():
    _, _, tops = run_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } }', [])
    assert [t.shape for t in tops] == [(2, 3), (2,)]


def test_input_one_shape_for_all_tops():
    _, _, tops = run_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 4 dim: 1 } }', [])
    assert [t.shape for t in tops] == [(4, 1), (4, 1)]


def test_input_shape_count_mismatch():
    with pytest.raises(NetDefinitionError, match="3 shapes for 2 tops"):
        run_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 1 } shape { dim: 2 } shape { dim: 3 } }', [])


@pytest.mark.gpu
def test_gpu_input_tops_live_on_the_device():
    layer, _, tops = run_layer('type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }', [],
                               device="gpu")
    tops[0].data[...] = tops[0].xp.arange(6, dtype=np.float32).reshape(2, 3)
    layer.forward([], tops)  # computes nothing: what the user wrote stays
    assert [t.shape for t in tops] == [(2, 3), (2, 3)]
    np.testing.assert_array_equal(tops[0].data.get(), np.arange(6).reshape(2, 3))
