"""The command line never says "internal error" for issue 12's cases: each is one line
`error: ...` on stderr and exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_harden_data import make_lmdb, truncate_half

ROOT = Path(__file__).resolve().parent.parent

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'


def dlsoft(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DLSOFT_CACHE=str(cwd / "cache"), DLSOFT_CONFIG=str(cwd / "config"))
    return subprocess.run([sys.executable, "-m", "dlsoft", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def net_with(tmp_path: Path, body: str, name: str = "net.prototxt") -> str:
    (tmp_path / name).write_text(body)
    return name


CASES = {
    "clip-without-max": (lambda t: ["summary", net_with(t, INPUT % "dim: 2 dim: 3" + 'layer { name: "clip" type: "Clip" '
                                    'bottom: "data" top: "c" clip_param { min: 0 } }\n')], "clip_param.max"),
    "conv-axis": (lambda t: ["summary", net_with(t, INPUT % "dim: 1 dim: 3 dim: 8 dim: 8" + 'layer { name: "conv" '
                             'type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 '
                             'kernel_size: 3 axis: 9 } }\n')], "axis 9"),
    "giant-input": (lambda t: ["summary", net_with(t, INPUT % "dim: 1099511627776")], "needs"),
    "pool-negative-output": (lambda t: ["summary", net_with(t, INPUT % "dim: 1 dim: 3 dim: 4 dim: 4" + 'layer { '
                                        'name: "pool" type: "Pooling" bottom: "data" top: "p" pooling_param { '
                                        'kernel_size: 11 } }\n')], "does not fit"),
    "yaml-alias-bomb": (lambda t: ["summary", net_with(t, "name: bomb\nlayer:\n" + "".join(
        f"- {{name: l{i}, type: Input, blobs: *bl}}\n" if i else
        "- {name: l0, type: Input, blobs: &bl [" + ", ".join(
            ["{data: &f [" + ", ".join(["0.5"] * 100) + "]}"] + ["{data: *f}"] * 99) + "]}\n"
        for i in range(100)), name="bomb.yaml")], "alias"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error_and_status_2(tmp_path, case):
    make_args, words = CASES[case]
    result = dlsoft(*make_args(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "internal error" not in result.stderr and words in lines[0], lines[0]


def train_files(tmp_path: Path, db: Path, policy: str = 'lr_policy: "fixed"') -> str:
    (tmp_path / "net.prototxt").write_text(
        f'layer {{ name: "data" type: "Data" top: "data" top: "label" data_param {{ source: "{db}" '
        'batch_size: 4 backend: LMDB } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 10 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    (tmp_path / "solver.prototxt").write_text(f'net: "net.prototxt" base_lr: 0.01 max_iter: 2\n{policy}\n'
                                              'snapshot_prefix: "snap"\n')
    return "solver.prototxt"


def test_train_on_a_truncated_lmdb(tmp_path):
    db = make_lmdb(tmp_path, count=200)
    truncate_half(db)
    result = dlsoft("train", "--solver", train_files(tmp_path, db), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "truncated" in error[0] and "internal error" not in result.stderr


def test_train_with_a_bad_lr_policy(tmp_path):
    db = make_lmdb(tmp_path, count=8, size=4)
    solver = train_files(tmp_path, db, 'lr_policy: "inv" power: 0.75\ngamma: -0.5')
    result = dlsoft("train", "--solver", solver, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "gamma" in error[0] and "solver.prototxt:3" in error[0], result.stderr
