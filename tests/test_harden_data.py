"""Hardening of the data path: truncated LMDBs, bad labels, decompression bombs (issue 12)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from dlsoft.data.tools import convert_imageset
from dlsoft.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


def make_lmdb(tmp_path: Path, count: int = 60, size: int = 32) -> Path:
    """A real LMDB written by dlsoft's convert_imageset (each record spans overflow pages)."""
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        lines.append(f"{i}.png {i % 10}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    db = tmp_path / "db"
    convert_imageset(str(images) + "/", str(tmp_path / "list.txt"), str(db))
    return db


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a SIGBUS there cannot take pytest down)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def truncate_half(db: Path) -> None:
    data = db / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)


def test_truncated_lmdb_is_a_data_error_not_sigbus(tmp_path):
    db = make_lmdb(tmp_path, count=200)
    truncate_half(db)
    result = run_python(f"""
        from dlsoft.data.lmdb_io import read_records
        from dlsoft.errors import DataError
        try:
            n = sum(1 for _ in read_records({str(db)!r}))
        except DataError as exc:
            print("DataError:", exc)
        else:
            print("read", n)
        """, tmp_path)
    assert result.returncode == 0, f"killed by signal {-result.returncode}: {result.stderr[-500:]}"
    out = result.stdout.strip()
    assert out.startswith("DataError:") and str(db) in out, out
    assert "truncated" in out.replace(str(db), ""), out
    assert "\n" not in out


def test_lmdb_truncated_while_training_stops_with_a_snapshot(tmp_path):
    """Cut the LMDB under a running solver: one-line DataError naming it, last good state kept."""
    db = make_lmdb(tmp_path, count=40, size=8)
    (tmp_path / "net.prototxt").write_text(textwrap.dedent(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                data_param {{ source: "{db}" batch_size: 4 backend: LMDB prefetch: 1 }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
        """))
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 100 snapshot: 0 '
        f'snapshot_prefix: "{tmp_path}/snap" snapshot_after_train: false random_seed: 1\n')
    result = run_python(f"""
        import os
        import time
        import dlsoft
        from dlsoft.errors import DataError
        solver = dlsoft.get_solver("solver.prototxt")
        solver.step(3)
        time.sleep(0.3)  # let the prefetch thread finish its batch before the file is cut
        data = os.path.join({str(db)!r}, "data.mdb")
        os.truncate(data, os.path.getsize(data) // 4)
        try:
            solver.solve()
        except DataError as exc:
            print("DataError:", exc)
        print("last", solver.last_snapshot)
        """, tmp_path)
    assert result.returncode == 0, f"killed by signal {-result.returncode}: {result.stderr[-800:]}"
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("DataError:") and str(db) in lines[0], lines
    assert "truncated" in lines[0].replace(str(db), "") and "last good state saved to" in lines[0], lines
    state = lines[1].split(" ", 1)[1]
    assert state.endswith(".solverstate") and os.path.isfile(state)
    assert os.path.isfile(state.replace(".solverstate", ".caffemodel"))
