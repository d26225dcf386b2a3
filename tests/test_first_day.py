"""The frictions a Caffe user hits on the first day, each answered (issue 11).

Weights that fit nothing, nets with nothing to train, snapshot folders that do not exist,
metrics files that join runs, the lr staircase, `import dlsoft.zoo`, and what a fresh
checkout must say and ignore.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import NetDefinitionError, SolverError, WeightsError
from dlsoft.netdef.io import parse_solver_text
from dlsoft.solver import Solver

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "dlsoft" / "model_zoo" / "entries" / "lenet_mnist"
DEPLOY, WEIGHTS = str(LENET / "deploy.prototxt"), str(LENET / "lenet_mnist.caffemodel")

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- weights
def test_weights_matching_no_layer_are_an_error(tmp_path):
    other = write(tmp_path / "renamed.prototxt", Path(DEPLOY).read_text().replace('"ip1"', '"fc_a"')
                  .replace('"ip2"', '"fc_b"').replace('"conv1"', '"c1"').replace('"conv2"', '"c2"'))
    with pytest.raises(WeightsError, match=r"none of its 4 layers with weights \(conv1, conv2, ip1, ip2\) is a layer "
                                           r"of net 'LeNet' \(layers with parameters: c1, c2, fc_a, fc_b\)"):
        dlsoft.Net(other, phase="TEST", weights=WEIGHTS)


def test_empty_and_text_weights_files_are_errors(tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="the weights file is empty"):
        dlsoft.Net(DEPLOY, phase="TEST", weights=str(empty))
    with pytest.raises(WeightsError, match="not a binary .caffemodel"):
        dlsoft.Net(DEPLOY, phase="TEST", weights=DEPLOY)  # the net definition passed as weights
    text = tmp_path / "notes.caffemodel"
    text.write_text("these are not weights\n" * 20)
    with pytest.raises(dlsoft.DlsoftError, match="not a valid NetParameter binary file"):
        dlsoft.Net(DEPLOY, phase="TEST", weights=str(text))
    h5 = tmp_path / "broken.h5"
    h5.write_text("no hdf5 here")
    with pytest.raises(WeightsError, match="cannot read it as HDF5"):
        dlsoft.Net(DEPLOY, phase="TEST", weights=str(h5))


def test_fine_tuning_logs_each_layer_ignored_or_not_initialised(tmp_path, caplog):
    renamed = write(tmp_path / "finetune.prototxt", Path(DEPLOY).read_text().replace('"ip2"', '"ip2_new"'))
    net = dlsoft.Net(renamed, phase="TEST")
    with caplog.at_level(logging.DEBUG, logger="dlsoft"):
        loaded = net.copy_from(WEIGHTS)
    assert loaded == 3
    assert "Ignoring source layer ip2" in caplog.text
    assert "Layer ip2_new: not initialised from" in caplog.text
    assert "Loaded weights for 3 of 4 layers with parameters" in caplog.text


# ----------------------------------------------------------------------------- nothing to train
def test_net_with_no_layers_is_refused(tmp_path):
    with pytest.raises(NetDefinitionError, match="net 'empty' has no layers for phase TRAIN") as info:
        dlsoft.Net(write(tmp_path / "empty.prototxt", 'name: "empty"\n'))
    assert "\n" not in str(info.value)
    only_test = write(tmp_path / "test_only.prototxt", 'name: "t"\nlayer { name: "d" type: "Input" top: "d" '
                      'include { phase: TEST } input_param { shape { dim: 1 } } }\n')
    with pytest.raises(NetDefinitionError, match="all 1 are excluded by include/exclude rules"):
        dlsoft.Net(only_test, phase="TRAIN")


def test_training_a_net_without_loss_is_refused_before_iteration_1(tmp_path):
    net = write(tmp_path / "noloss.prototxt", NET.replace('type: "EuclideanLoss"', 'type: "Eltwise"'))
    solver = Solver(parse_solver_text(f'net: "{net}" base_lr: 0.1 lr_policy: "fixed" max_iter: 5'), metrics=False)
    with pytest.raises(SolverError, match="the train net 'tiny' has no loss"):
        solver.solve()
    assert solver.iter == 0


# ----------------------------------------------------------------------------- snapshot folder
@pytest.mark.parametrize("snapshot", [0, 10])
def test_snapshot_prefix_folder_checked_before_training(tmp_path, snapshot):
    net = write(tmp_path / "net.prototxt", NET)
    solver_file = write(tmp_path / "solver.prototxt",
                        f'net: "{net}" base_lr: 0.1 lr_policy: "fixed" max_iter: 5 snapshot: {snapshot}\n'
                        f'snapshot_prefix: "{tmp_path}/missing/run"\n')
    with pytest.raises(SolverError, match=f"the folder '{tmp_path}/missing' of .* does not exist") as info:
        Solver(solver_file)
    assert ".tmp" not in str(info.value) and str(info.value).startswith(f"{solver_file}:2: snapshot_prefix")


# ----------------------------------------------------------------------------- metrics
def metrics_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_metrics_file_is_fresh_per_run_and_resume_adds_no_duplicates(tmp_path):
    net = write(tmp_path / "net.prototxt", NET)
    solver_file = write(tmp_path / "solver.prototxt",
                        f'net: "{net}" base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 4 max_iter: 8\n'
                        f'display: 2 snapshot: 4 snapshot_prefix: "{tmp_path}/run"\n')
    metrics = tmp_path / "run_metrics.jsonl"
    for _ in range(2):  # the same run twice: the second starts the file afresh
        solver = Solver(solver_file, progress_bar=False)
        solver.solve()
        solver.close()
        records = metrics_records(metrics)
        assert [r["phase"] for r in records].count("run") == 1
        assert [r["iter"] for r in records if r["phase"] == "train"] == [0, 2, 4, 6]
    first_run = [r for r in records if r["phase"] == "train"]
    resumed = Solver(solver_file, progress_bar=False)
    resumed.solve(resume=str(tmp_path / "run_iter_4.solverstate"))
    resumed.close()
    records = metrics_records(metrics)
    train = [r for r in records if r["phase"] == "train"]
    assert [r["iter"] for r in train] == [0, 2, 4, 6]  # 4 and 6 rewritten by the resumed run, not twice
    assert train[:2] == first_run[:2]
    assert [(r["iter"], r["start"]) for r in records if r["phase"] == "run"] == [(0, "fresh"), (4, "resumed")]
    from dlsoft.plot import parse_metrics
    curves = parse_metrics(metrics.read_text())
    assert [it for it, _ in curves.lr] == [0, 2, 4, 6]
    np.testing.assert_allclose([lr for _, lr in curves.lr], [0.01, 0.01, 0.001, 0.001])


def test_plot_draws_the_learning_rate_as_steps():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from dlsoft.plot import Curves, make_figure
    curves = Curves(train={"loss": [(0, 2.0), (100, 1.0), (200, 0.5)]}, lr=[(0, 0.01), (100, 0.001), (200, 0.001)])
    fig = make_figure(curves)
    try:
        lr_axis = fig.axes[-1]
        (line,) = lr_axis.get_lines()
        assert line.get_drawstyle() == "steps-post"
        assert fig.axes[0].get_lines()[0].get_drawstyle() == "default"  # the loss is a line
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- a fresh checkout
def test_import_dlsoft_zoo():
    import dlsoft.zoo
    assert dlsoft.zoo is dlsoft.model_zoo
    net = dlsoft.zoo.load("lenet_mnist")
    assert net.name == "LeNet"


def test_gitignore_covers_venv_and_sidecars():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert ".venv/" in lines and "*.dlstate.json" in lines


def test_readme_names_what_the_install_leaves_out():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## What the install does not bring"):]
    for needed in ("Graphviz", "../shared", "cupy", "slow"):
        assert needed in section
