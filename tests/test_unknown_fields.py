"""Unknown fields and layer types: every one reported at once, with file:line, layer and a hint."""
from __future__ import annotations

import re

import pytest

from dlsoft import Net
from dlsoft.errors import NetDefinitionError, ParseError
from dlsoft.netdef import io

NET = """name: "typos"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 4
    kernal_size: 3
  }
}
layer {
  type: "DenseCRF"
  bottom: "conv1"
  top: "crf"
  dense_crf_param { max_iter: 10 }
  name: "crf"
}
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { kernel_size: 2 colour: 3 } }
"""


def parts(message: str) -> list[str]:
    """The per-field pieces of a one-line report."""
    return re.split(r"; (?=\S+:\d+: )", message)


def test_every_unknown_field_of_a_prototxt_at_once(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    with pytest.raises(ParseError) as info:
        io.read_net(path)
    message = str(info.value)
    assert "\n" not in message
    near, fork, unknown = parts(message)
    assert near == (f"{path}:15: layer 'conv1' (Convolution): unknown field 'kernal_size' in "
                    "ConvolutionParameter (did you mean 'kernel_size'?)")
    # The layer's name comes after the field in the file; it is still named.
    assert fork.startswith(f"{path}:22: layer 'crf' (DenseCRF): unknown field 'dense_crf_param' in "
                           "LayerParameter (a field of the PSPNet (hszhao/PSPNet) fork of Caffe")
    assert unknown == (f"{path}:25: layer 'pool' (Pooling): unknown field 'colour' in PoolingParameter "
                       "(3 unknown fields in all)")
    assert (info.value.path, info.value.line) == (str(path), 15)


def test_every_unknown_field_of_a_yaml_net_at_once(tmp_path):
    good = io.parse_net_text(NET.replace("kernal_size", "kernel_size").replace("dense_crf_param { max_iter: 10 }", "")
                             .replace(" colour: 3", ""))
    io.write_net(good, tmp_path / "good.yaml")
    text = (tmp_path / "good.yaml").read_text()
    bad = text.replace("kernel_size: 3", "kernal_size: 3").replace("    kernel_size: 2", "    kernel_sise: 2")
    assert bad.count("kernal_size") == 1 and "kernel_sise" in bad
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    lines = bad.splitlines()
    with pytest.raises(ParseError) as info:
        io.read_net(path)
    first, second = parts(str(info.value))
    line1 = next(i for i, text in enumerate(lines, 1) if "kernal_size" in text)
    line2 = next(i for i, text in enumerate(lines, 1) if "kernel_sise" in text)
    assert first.startswith(f"{path}:{line1}: layer 'conv1' (Convolution): unknown field 'kernal_size' in "
                            "ConvolutionParameter (did you mean 'kernel_size'?)")
    assert second.startswith(f"{path}:{line2}: layer 'pool' (Pooling): unknown field 'kernel_sise'")
    assert "did you mean 'kernel_size'?" in second


def test_a_solver_field_of_a_fork_names_the_fork(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.01\nlr_policy: "plateau"\nplateau_winsize: 1000\n')
    with pytest.raises(ParseError, match=re.escape(f"{path}:3: unknown field 'plateau_winsize' in SolverParameter "
                                                   "(a field of the SSD (weiliu89/caffe) fork")):
        io.read_solver(path)


TYPES = """name: "types"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer {
  name: "c1"
  type: "Convloution"
  bottom: "data"
  top: "c1"
}
layer { name: "tile" type: "Tile" bottom: "c1" top: "tile" tile_param { tiles: 2 } }
layer { name: "crf" type: "DenseCRF" bottom: "c1" top: "crf" }
layer { name: "odd" type: "Qwertyuiop" bottom: "c1" top: "odd" }
"""


def test_every_unknown_layer_type_at_once(tmp_path, monkeypatch):
    from dlsoft.layers import registry
    registry.layer_class("Tile")
    monkeypatch.delitem(registry._REGISTRY, "Tile")  # as if BVLC's Tile were not implemented
    path = tmp_path / "net.prototxt"
    path.write_text(TYPES)
    with pytest.raises(NetDefinitionError) as info:
        Net(str(path), phase="TEST")
    message = str(info.value)
    assert "\n" not in message
    typo, bvlc, fork, unknown = parts(message)
    assert typo == f"{path}:4: layer 'c1': unknown layer type 'Convloution' (did you mean 'Convolution'?)"
    assert bvlc == f"{path}:9: layer 'tile': layer type 'Tile' (BVLC Caffe) is not implemented in dlsoft"
    assert fork.startswith(f"{path}:10: layer 'crf': layer type 'DenseCRF' (from the PSPNet (hszhao/PSPNet) "
                           "fork of Caffe) is not implemented in dlsoft")
    assert unknown.startswith(f"{path}:11: layer 'odd': unknown layer type 'Qwertyuiop' (`dlsoft layers`")
    assert unknown.endswith("(4 layers in all)")


def test_the_cli_prints_one_line_and_exits_2(tmp_path):
    from click.testing import CliRunner

    from dlsoft.cli import cli
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    result = CliRunner().invoke(cli, ["summary", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "kernal_size" in lines[0] and "Traceback" not in result.output
