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
from dlsoft.errors import DataError, DlsoftError

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


# ----------------------------------------------------------------------------- smaller ones

def test_blob_diff_can_be_assigned_before_it_is_read():
    from dlsoft.blob import Blob

    blob = Blob((2, 3))
    blob.diff = 1.5
    np.testing.assert_array_equal(blob.diff, np.full((2, 3), 1.5, np.float32))


def test_nan_label_in_a_list_file_is_named(tmp_path):
    from dlsoft.data.sources import check_label

    with pytest.raises(DataError, match=r"record 7: label nan is not a number"):
        check_label(float("nan"), "record 7")


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (12.0, "12"), (-1.0, "-1"), (float("inf"), "inf")])
def test_bad_label_in_a_loss_layer_names_its_batch_position(value, shown):
    from gradcheck import run_layer

    scores = np.zeros((4, 10), np.float32)
    labels = np.array([1, 2, value, 3], np.float32)
    for layer in ("SoftmaxWithLoss", "Accuracy"):
        with pytest.raises(DlsoftError) as info:
            run_layer(f'type: "{layer}" bottom: "x" bottom: "label"', [scores, labels])
        message = str(info.value)
        assert f"label {shown} out of range [0, 10) at position 2 of the batch" in message, message
        assert "9223372036854775808" not in message and "\n" not in message


def png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims ``width x height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    from dlsoft.data.images import encode_image

    data = bytearray(encode_image(np.zeros((1, 4, 4), np.uint8), "png"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def test_png_decompression_bomb_is_a_data_error(tmp_path):
    from dlsoft.data.images import decode_image, read_image

    bomb = png_claiming(20000, 20000)
    with pytest.raises(DataError, match="decompression bomb") as info:
        decode_image(bomb, where="LMDB x key '1'")
    assert "LMDB x key '1'" in str(info.value)
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(DataError, match="decompression bomb"):
        read_image(tmp_path / "bomb.png")


LAYERS_DIR = Path(__file__).resolve().parent / "data" / "python_layers"


@pytest.mark.parametrize("switch", ["env", "cli"])
def test_cwd_modules_can_be_switched_off(tmp_path, switch):
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "py" type: "Python" bottom: "x" top: "y"\n'
                   '        python_param { module: "my_layers" layer: "LearnableScale" param_str: "2" } }\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = lambda *args, **extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "dlsoft", *args], cwd=LAYERS_DIR, env={**env, **extra},
        capture_output=True, text=True, timeout=120)
    assert run("summary", str(net)).returncode == 0  # found in the working directory, as pycaffe does
    refused = run("summary", str(net), DLSOFT_NO_CWD_MODULES="1") if switch == "env" else \
        run("--no-cwd-modules", "summary", str(net))
    assert refused.returncode == 2 and "my_layers" in refused.stderr and "DLSOFT_NO_CWD_MODULES" in refused.stderr
    assert "internal error" not in refused.stderr


@pytest.mark.parametrize("module", ["../evil", ".relative", "/abs/path", "a/b", "pkg..mod", ""])
def test_python_module_must_be_a_module_name(module):
    from dlsoft.errors import NetDefinitionError
    from gradcheck import run_layer

    with pytest.raises(NetDefinitionError, match="python_param"):
        run_layer(f'type: "Python" python_param {{ module: "{module}" layer: "X" }}', [np.zeros((2, 3), np.float32)])


@pytest.mark.gpu
@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (12.0, "12")])
def test_gpu_softmax_loss_checks_labels_as_the_cpu_path(value, shown):
    from gradcheck import run_layer

    import dlsoft

    scores = np.zeros((4, 10), np.float32)
    labels = np.array([1, 2, value, 3], np.float32)
    layer, bottoms, (top,) = run_layer('type: "SoftmaxWithLoss" bottom: "x" bottom: "label"', [scores, labels],
                                       device="gpu:0")
    assert np.isnan(float(top.data))  # the bad label poisons the loss without a wait for the device
    with pytest.raises(DlsoftError, match=f"label {shown} out of range \\[0, 10\\) at position 2 of the batch"):
        layer.check_inputs(bottoms)
    net = caffe_pb2_net(scores.shape, labels.shape)
    with dlsoft.Net(net, phase="TRAIN", device="gpu:0") as gpu_net:
        gpu_net.blobs["x"].data[...] = gpu_net.blobs["x"].xp.asarray(scores)
        gpu_net.blobs["label"].data[...] = gpu_net.blobs["label"].xp.asarray(labels)
        with pytest.raises(DlsoftError, match=f"label {shown} out of range"):
            gpu_net.forward_backward()


def caffe_pb2_net(x_shape, label_shape):
    from dlsoft.netdef.io import parse_net_text

    dims = lambda shape: " ".join(f"dim: {d}" for d in shape)  # noqa: E731
    return parse_net_text(f'layer {{ name: "in" type: "Input" top: "x" top: "label" input_param {{ '
                          f'shape {{ {dims(x_shape)} }} shape {{ {dims(label_shape)} }} }} }}\n'
                          'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }\n')
