"""Layer plugins: a real installed distribution adds a layer type through entry points."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "data" / "plugin_pkg"

NET = """
name: "plugged"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer {
  name: "affine"
  type: "DemoAffine"
  bottom: "data"
  top: "out"
  python_param { param_str: '{"scale": 2.5, "shift": -1}' }
}
"""

BUILD = """
import json, sys
import numpy as np
import dlsoft
net = dlsoft.Net(sys.argv[1], phase="TEST")
x = np.arange(6, dtype=np.float32).reshape(2, 3)
out = net.forward(data=x)["out"]
net.blobs["out"].diff[...] = 1
net.backward()
from dlsoft.layers.registry import layer_origin
print(json.dumps({"out": out.tolist(), "diff": net.blobs["data"].diff.tolist(),
                  "origin": layer_origin("DemoAffine")}))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The plugin package installed (pip, no network) into a directory of its own."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(PLUGIN, source)  # the build leaves build/ and egg-info beside the sources
    target = work / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"pip could not build the plugin here: {proc.stderr.strip().splitlines()[-1:]}")
    assert (target / "dlsoft_plugin_demo-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def run_python(site, *args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_a_plugin_package_adds_a_layer_type(site, tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    proc = run_python(site, "-c", BUILD, str(net), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["out"] == [[2.5 * v - 1 for v in row] for row in ([0, 1, 2], [3, 4, 5])]
    assert result["diff"] == [[2.5] * 3] * 2
    assert result["origin"] == "plugin dlsoft-plugin-demo 0.1.0 (dlsoft_plugin_demo.layers:DemoAffineLayer)"


def test_dlsoft_layers_shows_where_each_type_comes_from(site, tmp_path):
    (tmp_path / "my_layers.py").write_text(
        "from dlsoft.layers import Layer, register\n\n"
        "@register\nclass Mine(Layer):\n    type = 'MyOwn'\n")
    code = ("import my_layers, sys\nfrom dlsoft.cli import main\nsys.argv = ['dlsoft', 'layers']\n"
            "main()\n")
    proc = run_python(site, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert rows["Convolution"] == "built in"
    assert rows["DemoAffine"] == "plugin dlsoft-plugin-demo 0.1.0 (dlsoft_plugin_demo.layers:DemoAffineLayer)"
    assert rows["MyOwn"] == "Python module my_layers"


def test_without_the_plugin_the_type_is_unknown_with_a_hint(tmp_path):
    from dlsoft import Net
    from dlsoft.errors import NetDefinitionError
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    with pytest.raises(NetDefinitionError, match=r"net.prototxt:6: layer 'affine': unknown layer type "
                                                 r"'DemoAffine' .*entry point group 'dlsoft.layers'"):
        Net(str(net), phase="TEST")
