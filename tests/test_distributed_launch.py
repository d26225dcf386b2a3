"""How ``dlsoft train`` decides to train data-parallel, and its one-line errors (no MPI needed)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from dlsoft.backend import gpu_count
from dlsoft.cli import cli
from dlsoft.distributed.comm import decode_nccl_id, encode_nccl_id
from dlsoft.distributed.launch import local_rank, mpi_world, spawned_rank, world_size
from dlsoft.distributed.runner import wanted


@pytest.mark.parametrize("env, flag, expected", [
    ({}, None, None),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"}, None, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, None, None),  # mpirun -n 1: alone
    ({"PMI_SIZE": "2", "PMI_RANK": "0"}, None, "mpi"),                         # MPICH's hydra
    ({"DLSOFT_WORLD_SIZE": "2", "DLSOFT_RANK": "1", "DLSOFT_GPU": "3"}, None, "nccl"),  # --gpu all's child
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "none", None),
    ({}, "mpi", "mpi"),
])
def test_which_transport(env, flag, expected):
    assert wanted(flag, env) == expected


def test_launcher_variables():
    env = {"OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "3", "PMIX_RANK": "5"}
    assert mpi_world(env) and world_size(env) == 8 and local_rank(env) == 3
    assert spawned_rank(env) is None and not mpi_world({})
    assert spawned_rank({"DLSOFT_WORLD_SIZE": "2", "DLSOFT_RANK": "1", "DLSOFT_GPU": "3", "DLSOFT_NCCL_ID": "ab"}) \
        == (1, 2, 3, "ab")


def test_nccl_id_round_trip():
    unique_id = tuple(range(-128, 0)) + tuple(range(0, 128))
    assert decode_nccl_id(encode_nccl_id(unique_id)) == unique_id


@pytest.mark.skipif(gpu_count() > 0, reason="checks the errors of a machine without GPUs")
@pytest.mark.parametrize("args, message", [
    (["--gpu", "0,1"], "--gpu 0,1: GPU 0 is not present (0 GPU(s) here"),
    (["--distributed", "nccl"], "--distributed nccl needs --gpu"),
    (["--distributed", "mpi", "--gpu", "0"], "--distributed mpi averages on the CPU"),
])
def test_multi_gpu_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 } } }\nlayer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
        'inner_product_param { num_output: 2 } }\nlayer { name: "l" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" }\n')
    result = CliRunner().invoke(cli, ["train", "net.prototxt", "--max-iter", "1", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
