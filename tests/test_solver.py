"""The training loop: display and test logs, snapshots and exact resumption, signals,
the NaN guard, validation errors, fine-tuning and hand-fed inputs."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from google.protobuf import text_format

from dlsoft.errors import SolverError
from dlsoft.netdef.io import parse_solver_text, read_net
from dlsoft.solver import Solver, get_solver
from dlsoft.solver import snapshot as snap

# Input-fed regression net: data (8x4) -> ip1 (8) -> ReLU -> Dropout -> ip2 (3) -> EuclideanLoss.
NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
"""

# Bundled digits through Data layers (exercises the data position in snapshots).
DIGITS_NET = """
name: "digits_mlp"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "builtin:digits/train" batch_size: 16 } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 } data_param { source: "builtin:digits/test" batch_size: 50 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return str(path)


def tiny_solver(tmp_path, extra: str = "", **options) -> Solver:
    """The tiny net's solver; ``extra`` fields override the defaults."""
    net = write(tmp_path / "net.prototxt", NET)
    param = parse_solver_text(f"""
        net: "{net}"
        base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.001
        max_iter: 10 display: 0 random_seed: 7
        snapshot_prefix: "{tmp_path / 'snap' / 'tiny'}" """)
    text_format.Merge(extra, param)  # later values win
    (tmp_path / "snap").mkdir(exist_ok=True)
    options.setdefault("metrics", False)
    return Solver(param, **options)


def batch(iteration: int):
    rng = np.random.default_rng(1000 + iteration)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    return x, np.tanh(x[:, :3] * 2).astype(np.float32)


def feed_and_step(solver: Solver, iters: int) -> None:
    for _ in range(iters):
        x, t = batch(solver.iter)
        data, target = solver.net.blobs["data"], solver.net.blobs["target"]
        data.data[...] = data.xp.asarray(x)  # numpy on the CPU, cupy on a GPU
        target.data[...] = target.xp.asarray(t)
        solver.step(1)


def weights(solver: Solver) -> list[np.ndarray]:
    return [blob.data.copy() for blob in solver.net.learnable_params]


# ----------------------------------------------------------------------------- the loop

def test_hand_fed_inputs_are_used_and_never_overwritten(tmp_path):
    solver = tiny_solver(tmp_path)
    x, t = batch(0)
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["target"].data[...] = t
    before = weights(solver)
    solver.step(1)
    assert solver.iter == 1
    np.testing.assert_array_equal(solver.net.blobs["data"].data, x)
    np.testing.assert_array_equal(solver.net.blobs["target"].data, t)
    assert any(not np.array_equal(a, b) for a, b in zip(before, weights(solver)))
    loss_first = solver.net.blobs["loss"].data.item()
    feed_and_step(solver, 30)
    solver.net.forward(data=x, target=t)
    assert solver.net.blobs["loss"].data.item() < loss_first


def test_display_and_test_lines_are_caffe_format(tmp_path, caplog):
    net = write(tmp_path / "digits.prototxt", DIGITS_NET)
    param = parse_solver_text(f"""
        net: "{net}" test_iter: 2 test_interval: 4 test_compute_loss: true
        base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 max_iter: 8 display: 4 average_loss: 2
        random_seed: 3 snapshot_prefix: "{tmp_path / 'digits'}" """)
    with caplog.at_level(logging.INFO, logger="dlsoft.solver"), Solver(param) as solver:
        solver.solve()
    text = caplog.text
    assert "Solving digits_mlp" in text and "Learning Rate Policy: fixed" in text
    assert "Iteration 0, Testing net (#0)" in text and "Iteration 8, Testing net (#0)" in text
    assert "Iteration 4, lr = 0.1" in text
    assert "    Train net output #0: loss = " in text and " (* 1 = " in text
    assert "    Test net output #0: accuracy = " in text
    assert "    Test net output #1: loss = " in text and "Test loss: " in text
    assert "Snapshotting to binary proto file " + str(tmp_path / "digits_iter_8.caffemodel") in text
    assert "Snapshotting solver state to binary proto file " + str(tmp_path / "digits_iter_8.solverstate") in text
    assert "Optimization Done." in text
    lines = [m.group(0) for m in re.finditer(r"Iteration (\d+) \(.* iter/s, .*s/4 iters\), loss = [\d.e+-]+", text)]
    assert len(lines) == 2  # iterations 0 and 4
    metrics = [json.loads(line) for line in (tmp_path / "digits_metrics.jsonl").read_text().splitlines()]
    start, metrics = metrics[0], metrics[1:]
    assert (start["phase"], start["iter"], start["start"]) == ("run", 0, "fresh")  # the run's start
    assert [(m["phase"], m["iter"]) for m in metrics] == [("test", 0), ("train", 0), ("test", 4), ("train", 4),
                                                          ("test", 8)]
    assert 0 <= metrics[-1]["scores"]["accuracy"] <= 1 and metrics[1]["lr"] == pytest.approx(0.1)
    assert solver.test_scores[0]["accuracy"] == metrics[-1]["scores"]["accuracy"]


def test_smoothed_loss_is_the_mean_of_the_last_average_loss(tmp_path):
    solver = tiny_solver(tmp_path, "average_loss: 3")
    losses = []
    for _ in range(5):
        feed_and_step(solver, 1)
        losses.append(solver.net.blobs["loss"].data.item())
    # step(1) restarts the window each call, as Caffe's Step does; one step(5) keeps it
    assert solver.smoothed_loss == pytest.approx(losses[-1], rel=1e-6)
    solver2 = tiny_solver(tmp_path, "average_loss: 3")
    x, t = batch(0)
    solver2.net.blobs["data"].data[...] = x
    solver2.net.blobs["target"].data[...] = t
    seen = []
    original = solver2.net.forward_backward

    def record():
        seen.append(original())
        return seen[-1]
    solver2.net.forward_backward = record
    solver2.step(5)
    assert solver2.smoothed_loss == pytest.approx(np.mean(seen[-3:]), rel=1e-5)


def test_test_nets_share_the_train_weights(tmp_path):
    net = write(tmp_path / "digits.prototxt", DIGITS_NET)
    param = parse_solver_text(f'net: "{net}" test_iter: 1 test_interval: 100 base_lr: 0.1 lr_policy: "fixed"')
    with Solver(param, metrics=False) as solver:
        assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == "TEST"
        assert "accuracy" in solver.test_nets[0].outputs and "accuracy" not in solver.net.outputs
        for name in ("ip1", "ip2"):
            for mine, theirs in zip(solver.test_nets[0].params[name], solver.net.params[name]):
                assert np.shares_memory(mine.data, theirs.data)


def test_train_and_test_state_select_layers(tmp_path):
    net = write(tmp_path / "staged.prototxt", """
        name: "staged"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "data" top: "out" include { stage: "alpha" }
                inner_product_param { num_output: 2 } }
        layer { name: "b" type: "InnerProduct" bottom: "data" top: "out" include { stage: "beta" }
                inner_product_param { num_output: 5 } }
    """)
    param = parse_solver_text(f"""
        net: "{net}" base_lr: 0.1 lr_policy: "fixed" test_iter: 1 test_iter: 1 test_interval: 10
        train_state {{ stage: "alpha" }} test_state {{ stage: "beta" }} test_state {{ stage: "alpha" }}""")
    solver = Solver(param, metrics=False)
    assert solver.net.layer_names == ["data", "a"]
    assert solver.test_nets[0].layer_names == ["data", "b"] and solver.test_nets[1].layer_names == ["data", "a"]
    assert [net.phase for net in solver.test_nets] == ["TEST", "TEST"]


def test_relative_net_path_falls_back_to_the_solver_folder(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    folder.mkdir()
    write(folder / "net.prototxt", NET)
    solver_path = write(folder / "solver.prototxt", 'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    monkeypatch.chdir(tmp_path)
    solver = get_solver(solver_path, metrics=False)
    assert solver.net.name == "tiny"
    assert solver.param.snapshot_prefix == str(folder / "solver")  # Caffe: the solver path without extension


def test_legacy_solver_type_enum(tmp_path):
    solver = tiny_solver(tmp_path, "solver_type: NESTEROV")
    assert solver.type == "Nesterov"


# ----------------------------------------------------------------------------- snapshots

def test_snapshot_files_and_contents(tmp_path):
    solver = tiny_solver(tmp_path)
    feed_and_step(solver, 3)
    state_path = solver.snapshot()
    prefix = tmp_path / "snap" / "tiny"
    assert state_path == f"{prefix}_iter_3.solverstate"
    state = snap.read_state(state_path)
    assert state.iter == 3 and state.learned_net == f"{prefix}_iter_3.caffemodel"
    assert [h.shape for h in state.history] == [b.shape for b in solver.net.learnable_params]
    for saved, mine in zip(state.history, solver.history):
        np.testing.assert_array_equal(saved, mine)
    model = read_net(state.learned_net)
    saved_ip1 = next(layer for layer in model.layer if layer.name == "ip1")
    np.testing.assert_array_equal(np.array(saved_ip1.blobs[0].data).reshape(8, 4), solver.net.params["ip1"][0].data)
    assert os.path.isfile(f"{prefix}_iter_3.dlstate.json")
    assert not [name for name in os.listdir(tmp_path / "snap") if name.endswith(".tmp")]


def test_hdf5_snapshot_layout_and_restore(tmp_path):
    h5py = pytest.importorskip("h5py")
    solver = tiny_solver(tmp_path, 'snapshot_format: HDF5 type: "Adam" momentum: 0.9 momentum2: 0.999')
    feed_and_step(solver, 2)
    state_path = solver.snapshot()
    prefix = tmp_path / "snap" / "tiny"
    assert state_path == f"{prefix}_iter_2.solverstate.h5"
    with h5py.File(f"{prefix}_iter_2.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(f["data/ip1/0"][()], solver.net.params["ip1"][0].data)
        assert sorted(f["data/ip1"]) == ["0", "1"]
    with h5py.File(state_path, "r") as f:
        assert int(f["iter"][()]) == 2 and int(f["current_step"][()]) == 0
        assert f["learned_net"][()].decode() == f"{prefix}_iter_2.caffemodel.h5"
        assert len(f["history"]) == 2 * len(solver.net.learnable_params)  # Adam: m then v
    other = tiny_solver(tmp_path, 'snapshot_format: HDF5 type: "Adam" momentum: 0.9 momentum2: 0.999')
    other.restore(state_path)
    assert other.iter == 2
    for a, b in zip(weights(other), weights(solver)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(other.history, solver.history):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_resume_is_bitwise_identical(tmp_path, kind):
    extra = f'type: "{kind}" momentum2: 0.99' if kind == "Adam" else ""
    straight = tiny_solver(tmp_path, extra)
    feed_and_step(straight, 10)

    first = tiny_solver(tmp_path, extra)
    feed_and_step(first, 5)
    state_path = first.snapshot()
    np.random.default_rng().random(100)  # unrelated use of randomness in between
    resumed = tiny_solver(tmp_path, extra)
    resumed.restore(state_path)
    assert resumed.iter == 5
    feed_and_step(resumed, 5)
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_array_equal(a, b)  # dropout masks continue from the saved random state


def test_resume_with_data_layers_is_bitwise_identical(tmp_path):
    net = write(tmp_path / "digits.prototxt", DIGITS_NET)

    def make():
        return Solver(parse_solver_text(f"""
            net: "{net}" test_iter: 3 test_interval: 4 base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3
            momentum: 0.9 weight_decay: 0.0005 max_iter: 12 iter_size: 2 random_seed: 11
            snapshot: 6 snapshot_prefix: "{tmp_path / 'mlp'}" snapshot_after_train: false"""), metrics=False)
    with make() as straight:
        straight.solve()
        expected = weights(straight)
    with make() as resumed:
        resumed.solve(resume=str(tmp_path / "mlp_iter_6.solverstate"))
        assert resumed.iter == 12
        for a, b in zip(expected, weights(resumed)):
            np.testing.assert_array_equal(a, b)


def test_interrupted_snapshot_leaves_the_previous_pair(tmp_path, monkeypatch):
    solver = tiny_solver(tmp_path)
    feed_and_step(solver, 2)
    good = solver.snapshot()
    feed_and_step(solver, 2)
    real_fsync = os.fsync
    calls = []

    def crash_on_second_file(fd):  # the caffemodel is written, the next file dies mid-write
        calls.append(fd)
        if len(calls) == 3:  # files are fsynced, then their folder: 1, 2 = caffemodel; 3 = sidecar
            raise OSError("disk on fire")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", crash_on_second_file)
    with pytest.raises(OSError, match="disk on fire"):
        solver.snapshot()
    monkeypatch.setattr(os, "fsync", real_fsync)
    folder = tmp_path / "snap"
    assert not (folder / "tiny_iter_4.solverstate").exists()
    assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]
    restored = tiny_solver(tmp_path)
    restored.restore(good)
    assert restored.iter == 2


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from dlsoft.netdef.io import parse_solver_text
from dlsoft.solver import Solver
param = parse_solver_text('''
  net_param {{ name: "big"
    layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1500 }} }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param {{ num_output: 1500 weight_filler {{ type: "gaussian" std: 1 }} }} }} }}
  base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 snapshot_prefix: "{prefix}"''')
solver = Solver(param, metrics=False)
weight = solver.net.params["ip"][0]
while True:
    solver.iter += 1
    weight.data[...] = solver.iter  # each snapshot's weights say which iteration wrote them
    solver.history[0][...] = -solver.iter
    solver.snapshot()
    print(solver.iter, flush=True)
"""


def test_killed_during_snapshot_leaves_a_loadable_pair(tmp_path):
    prefix = str(tmp_path / "big")
    script = tmp_path / "snapshotter.py"
    script.write_text(KILL_SCRIPT.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         prefix=prefix))
    rng = np.random.default_rng(0)
    for _ in range(3):
        process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().strip()  # at least one complete snapshot
            time.sleep(float(rng.uniform(0.05, 0.4)))
        finally:
            process.kill()
            process.wait()
        states = sorted((f for f in os.listdir(tmp_path) if f.endswith(".solverstate")),
                        key=lambda f: int(f.split("_iter_")[1].split(".")[0]))
        newest = str(tmp_path / states[-1])
        state = snap.read_state(newest)
        model = read_net(state.learned_net)
        assert np.all(np.array(model.layer[1].blobs[0].data) == state.iter)
        assert np.all(state.history[0] == -state.iter)
        for name in os.listdir(tmp_path):  # half-written temp files are never taken for snapshots
            if name.endswith(".tmp"):
                os.unlink(tmp_path / name)


# ----------------------------------------------------------------------------- fine-tuning

def test_finetune_copies_matching_layers_and_keeps_new_fillers(tmp_path):
    source = tiny_solver(tmp_path)
    feed_and_step(source, 2)
    path = str(tmp_path / "pretrained.caffemodel")
    source.net.save(path)
    renamed = NET.replace('name: "ip2"', 'name: "ip2_new"')
    write(tmp_path / "new.prototxt", renamed)
    param = parse_solver_text(f'net: "{tmp_path / "new.prototxt"}" base_lr: 0.1 lr_policy: "fixed" random_seed: 7')
    fresh = Solver(param, metrics=False)
    tuned = Solver(param, weights=path, metrics=False)
    np.testing.assert_array_equal(tuned.net.params["ip1"][0].data, source.net.params["ip1"][0].data)
    np.testing.assert_array_equal(tuned.net.params["ip2_new"][0].data, fresh.net.params["ip2_new"][0].data)
    param.weights.append(path)  # the solver's own `weights` field works the same
    np.testing.assert_array_equal(Solver(param, metrics=False).net.params["ip1"][0].data,
                                  source.net.params["ip1"][0].data)


# ----------------------------------------------------------------------------- signals and the NaN guard

@pytest.mark.parametrize("effect, stops", [("stop", True), ("snapshot", False), ("none", False)])
def test_sigint_effects(tmp_path, effect, stops):
    solver = tiny_solver(tmp_path, "max_iter: 6", sigint_effect=effect)
    x, t = batch(0)
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["target"].data[...] = t
    original = solver.net.forward_backward

    def forward_backward():
        if solver.iter == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original()
    solver.net.forward_backward = forward_backward
    solver.solve()
    assert solver.iter == (3 if stops else 6)
    files = sorted(os.listdir(tmp_path / "snap"))
    expected = {"stop": ["tiny_iter_3"], "snapshot": ["tiny_iter_3", "tiny_iter_6"], "none": ["tiny_iter_6"]}[effect]
    assert [f[: -len(".solverstate")] for f in files if f.endswith(".solverstate")] == expected
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler removed afterwards


def test_sighup_snapshots_and_continues(tmp_path):
    solver = tiny_solver(tmp_path, "max_iter: 4 snapshot_after_train: false")
    x, t = batch(0)
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["target"].data[...] = t
    original = solver.net.forward_backward

    def forward_backward():
        if solver.iter == 1:
            os.kill(os.getpid(), signal.SIGHUP)
        return original()
    solver.net.forward_backward = forward_backward
    solver.solve()
    assert solver.iter == 4
    assert sorted(f for f in os.listdir(tmp_path / "snap") if f.endswith(".solverstate")) == ["tiny_iter_2.solverstate"]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_non_finite_loss_stops_and_names_the_first_bad_blob(tmp_path):
    solver = tiny_solver(tmp_path)
    feed_and_step(solver, 2)
    solver.snapshot()
    x, t = batch(2)
    x[3, 1] = np.nan
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["target"].data[...] = t
    before = weights(solver)
    with pytest.raises(SolverError) as info:
        solver.solve()
    message = str(info.value)
    assert "iteration 2" in message and "blob 'data'" in message and "\n" not in message
    assert "tiny_iter_2.solverstate" in message  # the last good snapshot
    assert solver.iter == 2
    for a, b in zip(before, weights(solver)):
        np.testing.assert_array_equal(a, b)  # no update with the bad gradients
    assert sorted(f for f in os.listdir(tmp_path / "snap") if f.endswith(".solverstate")) == ["tiny_iter_2.solverstate"]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's inf/nan warnings must not leak out of it
def test_non_finite_parameter_is_named(tmp_path):
    solver = tiny_solver(tmp_path)
    solver.net.blobs["data"].data[...] = batch(0)[0]
    solver.net.params["ip2"][0].data[0, 0] = np.inf
    # inf * 0 in the layers is the point of this test: numpy's warnings about it stay here
    with np.errstate(invalid="ignore", over="ignore"), pytest.raises(SolverError, match=r"parameter 0 of layer 'ip2'"):
        solver.step(1)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("body, field", [
    ('base_lr: 0.1 lr_policy: "fixed"', "net"),
    ('net: "NET" base_lr: -0.1 lr_policy: "fixed"', "base_lr"),
    ('net: "NET" base_lr: 0.1 lr_policy: "cosine"', "lr_policy"),
    ('train_net: "NET" test_iter: 10 test_interval: 5 base_lr: 0.1 lr_policy: "fixed"', "test_iter"),
    ('net: "NET" base_lr: 0.1 lr_policy: "fixed" type: "Adamax"', "type"),
    ('net: "NET" base_lr: 0.1 lr_policy: "step"', "stepsize"),
    ('net: "NET" base_lr: 0.1 lr_policy: "fixed" test_iter: 3', "test_interval"),
    ('net: "NET" base_lr: 0.1 lr_policy: "fixed" regularization_type: "L3"', "regularization_type"),
    ('net: "NET" base_lr: 0.1 lr_policy: "fixed" type: "AdaGrad" momentum: 0.9', "momentum"),
    ('net: "missing.prototxt" base_lr: 0.1 lr_policy: "fixed"', "net"),
    ('net: "NET" base_lr: 0.1 lr_policy: "fixed" snapshot: 10 snapshot_prefix: "/nonexistent/dir/x"',
     "snapshot_prefix"),
])
def test_bad_solver_files_give_one_line_errors(tmp_path, body, field):
    net = write(tmp_path / "net.prototxt", NET)
    path = write(tmp_path / "solver.prototxt", "# a solver\n" + body.replace('"NET"', f'"{net}"').replace(" ", "\n", 0))
    with pytest.raises(SolverError) as info:
        Solver(path, metrics=False)
    message = str(info.value)
    assert message.startswith(path) and f"{field}:" in message and "\n" not in message


def test_error_names_the_line(tmp_path):
    path = write(tmp_path / "solver.prototxt", 'net: "x"\nbase_lr: 0.1\nlr_policy: "warmup"\n')
    with pytest.raises(SolverError, match=r"solver.prototxt:3: lr_policy: unknown policy 'warmup'"):
        Solver(path)


def test_iter_size_accumulates_forward_backward_passes(tmp_path):
    deterministic = NET.replace('dropout_ratio: 0.25', 'dropout_ratio: 0.0')
    write(tmp_path / "net.prototxt", deterministic)

    def run(iter_size: int):
        net = tmp_path / "det.prototxt"
        write(net, deterministic)
        param = parse_solver_text(f'net: "{net}" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 '
                                  f'weight_decay: 0.01 random_seed: 4 iter_size: {iter_size}')
        solver = Solver(param, metrics=False)
        calls = []
        original = solver.net.forward_backward
        solver.net.forward_backward = lambda: calls.append(1) or original()
        feed_and_step(solver, 3)
        return weights(solver), len(calls)
    once, calls_once = run(1)
    twice, calls_twice = run(2)
    assert (calls_once, calls_twice) == (3, 6)
    for a, b in zip(once, twice):  # (g + g) / 2 == g exactly
        np.testing.assert_array_equal(a, b)


def test_test_initialization_false_skips_iteration_zero(tmp_path, caplog):
    net = write(tmp_path / "digits.prototxt", DIGITS_NET)
    param = parse_solver_text(f"""
        net: "{net}" test_iter: 1 test_interval: 2 test_initialization: false
        base_lr: 0.1 lr_policy: "fixed" max_iter: 3 snapshot_after_train: false""")
    with caplog.at_level(logging.INFO, logger="dlsoft.solver"), Solver(param, metrics=False) as solver:
        solver.solve()
    assert "Iteration 0, Testing net" not in caplog.text and "Iteration 2, Testing net (#0)" in caplog.text


def test_progress_bar_shows_iteration_loss_and_lr(tmp_path, capsys, monkeypatch):
    from dlsoft.solver import progress
    monkeypatch.setitem(progress.BAR_OPTIONS, "mininterval", 0)  # draw every update
    solver = tiny_solver(tmp_path, progress_bar=True)
    x, t = batch(0)
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["target"].data[...] = t
    solver.step(3)
    err = capsys.readouterr().err
    assert "iter 3" in err and "loss=" in err and "lr=0.05" in err


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_gpu_training_matches_cpu(tmp_path, kind):
    from dlsoft.backend import to_numpy
    deterministic = NET.replace('dropout_ratio: 0.25', 'dropout_ratio: 0.0')
    net = write(tmp_path / "det.prototxt", deterministic)
    momentum = "0" if kind in ("AdaGrad", "RMSProp") else "0.9"
    text = (f'net: "{net}" type: "{kind}" base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 2 '
            f'momentum: {momentum} weight_decay: 0.01 clip_gradients: 5 iter_size: 2 random_seed: 4 '
            f'snapshot_prefix: "{tmp_path / kind}"')
    results = []
    for device in ("cpu", "gpu"):
        solver = Solver(parse_solver_text(text), device=device, metrics=False)
        feed_and_step(solver, 4)
        state = solver.snapshot()
        restored = Solver(parse_solver_text(text), device=device, metrics=False)
        restored.restore(state)
        feed_and_step(restored, 2)
        results.append([to_numpy(b.data).copy() for b in restored.net.learnable_params])
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)


def test_train_net_param_and_several_test_nets_in_caffe_order(tmp_path):
    small = ('name: "{}" layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 2 }} }} }} '
             'layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 }} }}')
    test_file = write(tmp_path / "from_file.prototxt", small.format("file"))
    param = parse_solver_text(f"""
        train_net_param {{ {small.format("train")} }}
        test_net: "{test_file}"
        test_net_param {{ {small.format("param_a")} }} test_net_param {{ {small.format("param_b")} }}
        test_iter: 1 test_iter: 2 test_iter: 3 test_interval: 5 base_lr: 0.1 lr_policy: "fixed" """)
    solver = Solver(param, metrics=False)
    assert solver.net.name == "train"
    assert [net.name for net in solver.test_nets] == ["param_a", "param_b", "file"]  # params first, as Caffe
    assert np.shares_memory(solver.test_nets[2].params["ip"][0].data, solver.net.params["ip"][0].data)


@pytest.mark.parametrize("regularization", ["L2", "L1"])
def test_update_runs_caffes_named_steps(tmp_path, regularization):
    """normalize (1/iter_size), regularize (in the solver's own buffer), compute_update."""
    solver = tiny_solver(tmp_path, f'iter_size: 2 regularization_type: "{regularization}" type: "SGD" momentum: 0')
    assert all(not buffers for buffers in solver.rule.scratch)  # SGD needs none: decay is the solver's
    blob = solver.net.learnable_params[0]
    w = np.asarray(blob.data).copy()
    g = np.random.default_rng(3).standard_normal(blob.shape).astype(np.float32)
    blob.diff[...] = g
    solver.normalize(0, blob)
    np.testing.assert_allclose(blob.diff, g / 2, rtol=1e-6)
    solver.regularize(0, blob)
    decay = 0.001 * solver.net.params_weight_decay[0]
    expected = g / 2 + decay * (np.sign(w) if regularization == "L1" else w)
    np.testing.assert_allclose(blob.diff, expected, rtol=1e-5, atol=1e-8)
    solver.compute_update(0, 0.05)
    np.testing.assert_allclose(blob.diff, 0.05 * solver.net.params_lr[0] * expected, rtol=1e-5, atol=1e-8)
