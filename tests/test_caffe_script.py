"""A script written for pycaffe (examples/pycaffe/train_digits.py) runs unchanged with `import caffe`.

It uses NetSpec, a caffe.Layer Python loss, caffe.SGDSolver, caffe.Net(proto, weights,
caffe.TEST), caffe.io.load_image and caffe.io.Transformer; it is run as a user would run
it, in a fresh folder, by a new Python process.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "pycaffe" / "train_digits.py"


def test_script_is_pycaffe_only():
    text = SCRIPT.read_text()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert "import caffe" in imports and not [line for line in imports if "dlsoft" in line]


def test_pycaffe_script_runs_unchanged(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    first, last = map(float, re.search(r"first 10 iterations ([\d.]+), last 10 ([\d.]+)", result.stdout).groups())
    assert first > 1.5 and last < 0.5 * first
    accuracy = float(re.search(r"accuracy ([\d.]+)", result.stdout).group(1))
    assert accuracy >= 0.7
    for name in ("train.prototxt", "deploy.prototxt", "solver.prototxt", "digits.caffemodel", "digit_9.png"):
        assert (tmp_path / name).is_file()
