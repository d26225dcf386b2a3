"""The layers' structural rules (DESIGN.md section 1), checked on the source.

- One rule for what runs where: a layer has one body written against its blobs' array
  module, or it overrides ``forward_gpu``/``backward_gpu`` with kernels. Nothing else in
  ``dlsoft/layers`` tests the device (the Layer base class's dispatch is the one place).
- Every CUDA source lives in ``dlsoft/layers/kernels`` (registered in ``kernels.SOURCES``).
- Proto enums are compared by name (``caffe_pb2.PoolingParameter.MAX``), never by number.
- Registered layer classes are called ``XxxLayer``; parameter blobs are named
  ``<layer>.<role>``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dlsoft.layers import layer_class, registered_types
from gradcheck import run_layer

LAYERS = Path(__file__).resolve().parent.parent / "dlsoft" / "layers"

#: (pattern, what it does wrong, a line it must catch)
FORBIDDEN = [
    (r"\bis_gpu\b", "tests the device", "if self.device.is_gpu:"),
    (r"isinstance\([^)]*ndarray", "tests the array type to choose a path", "if isinstance(x, np.ndarray):"),
    (r"\b(xp|np) is (not )?(np|xp)\b|\b(xp|np) [!=]= (np|xp)\b", "tests the array module", "if xp is np:"),
    (r"\b(method|op|operation|pool|norm_region|code_type|variance_norm|round_mode|backend|phase)\s*[!=]=\s*\d",
     "compares a proto enum by number", "if self.method == 0:"),
    (r"^[A-Z_]+(, [A-Z_]+)+ = \d+(, \d+)+", "numbers a proto enum by hand", "PROD, SUM, MAX = 0, 1, 2"),
]
#: The one place that chooses the device: Layer.forward/backward's dispatch.
ALLOWED = {("base.py", "        if self.device.is_gpu:")}


def layer_sources():
    return sorted(LAYERS.rglob("*.py"))


def test_nothing_but_the_base_class_chooses_the_device_or_numbers_an_enum():
    offences = []
    for path in layer_sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if (path.name, line) in ALLOWED or line.lstrip().startswith("#"):
                continue
            for pattern, wrong, _ in FORBIDDEN:
                if re.search(pattern, line):
                    offences.append(f"{path.relative_to(LAYERS)}:{number}: {wrong}: {line.strip()}")
    assert not offences, "\n".join(offences)


def test_the_rule_patterns_catch_what_they_should():
    """The grep above is only as good as its patterns: each catches its example."""
    for pattern, _, example in FORBIDDEN:
        assert re.search(pattern, example), (pattern, example)


def test_cuda_sources_live_in_the_kernels_package():
    offences = [f"{path.relative_to(LAYERS)}" for path in layer_sources()
                if path.parent.name != "kernels" and re.search(r'__global__|RawKernel\(|RawModule\(',
                                                               path.read_text(encoding="utf-8"))]
    assert not offences, f"CUDA sources outside dlsoft/layers/kernels: {offences}"


def test_registered_layer_classes_are_named_xxx_layer():
    wrong = [f"{name}: {layer_class(name).__name__}" for name in registered_types()
             if not layer_class(name).__name__.endswith("Layer")]
    assert not wrong, wrong


@pytest.mark.parametrize("text, bottoms, roles", [
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }', [(1, 1, 2, 2)], ["weight", "bias"]),
    ('type: "InnerProduct" inner_product_param { num_output: 2 }', [(2, 3)], ["weight", "bias"]),
    ('type: "Embed" embed_param { num_output: 2 input_dim: 3 }', [(2,)], ["weight", "bias"]),
    ('type: "PReLU"', [(2, 3)], ["slope"]),
    ('type: "BatchNorm"', [(2, 3)], ["mean", "variance", "scale_factor"]),
    ('type: "Scale" scale_param { bias_term: true }', [(2, 3)], ["scale", "bias"]),
    ('type: "Normalize"', [(1, 2, 2, 2)], ["scale"]),
    ('type: "Parameter" parameter_param { shape { dim: 2 } }', [], ["param"]),
    ('type: "RNN" recurrent_param { num_output: 2 }', [(2, 1, 3), (2, 1)], ["W_xh", "b_h", "W_hh", "W_ho", "b_o"]),
    ('type: "LSTM" recurrent_param { num_output: 2 }', [(2, 1, 3), (2, 1)], ["W_xc", "b_c", "W_hc"]),
])
def test_parameter_blobs_are_named_layer_dot_role(text, bottoms, roles):
    layer, _, _ = run_layer(text, [np.zeros(shape, np.float32) for shape in bottoms])
    assert [blob.name for blob in layer.blobs] == [f"{layer.name}.{role}" for role in roles]


def test_a_single_layer_checks_its_blob_counts():
    """Layer.initialize (Caffe's SetUp) checks the counts, so a layer used alone gets them too."""
    from dlsoft.errors import NetDefinitionError

    with pytest.raises(NetDefinitionError, match=r"layer 'innerproduct' \(type InnerProduct\): takes 1 bottom"):
        run_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', [np.zeros((2, 3))] * 2)
    with pytest.raises(NetDefinitionError, match="produces at most 1 top blob"):
        run_layer('type: "EuclideanLoss"', [np.zeros((2, 3))] * 2, num_tops=2)


def test_loss_weight_defaults_are_class_attributes():
    """Losses weigh 1 by default, everything else (Accuracy included) 0: by class, not by name."""
    from dlsoft.layers.loss import LossLayer

    for name in registered_types():
        cls = layer_class(name)
        assert cls.default_loss_weight == (1.0 if issubclass(cls, LossLayer) else 0.0), name
        if name.endswith("Loss"):
            assert issubclass(cls, LossLayer), name
    assert not issubclass(layer_class("Accuracy"), LossLayer)
