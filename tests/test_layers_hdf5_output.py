"""HDF5Output: the bottoms land in the file as datasets "data" and "label", read back with
h5py, and HDF5Data reads the file back into a net."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import covers, run_layer

from dlsoft.errors import DataError



def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 2, 4, 5)).astype(np.float32), rng.integers(0, 9, (3, 1)).astype(np.float32)


@covers("HDF5Output", "reference")
def test_hdf5_output_writes_and_appends_each_batch(tmp_path):
    h5py = pytest.importorskip("h5py")
    data, label = arrays()
    path = tmp_path / "out.h5"
    layer, bottoms, tops = run_layer(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{path}" }}',
                                     [data, label], num_tops=0)
    with h5py.File(path, "r") as f:                          # readable while the net runs
        np.testing.assert_array_equal(f["data"][()], data)
        np.testing.assert_array_equal(f["label"][()], label)
    layer.forward(bottoms, tops)
    layer.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][()], np.concatenate([data, data]))


def test_hdf5_data_reads_what_hdf5_output_wrote(tmp_path):
    data, label = arrays(seed=1)
    path = tmp_path / "out.h5"
    layer, _, _ = run_layer(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{path}" }}', [data, label],
                            num_tops=0)
    layer.close()
    (tmp_path / "list.txt").write_text(f"{path}\n")
    reader, _, tops = run_layer(f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
                                f'source: "{tmp_path / "list.txt"}" batch_size: 3 }}', [], phase="TEST")
    np.testing.assert_array_equal(tops[0].data, data)
    np.testing.assert_array_equal(tops[1].data, label)
    reader.close()


def test_hdf5_output_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_layer(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/no/out.h5" }}', list(arrays()),
                  num_tops=0)


@covers("HDF5Output", "gpu")
@pytest.mark.gpu
def test_hdf5_output_gpu_writes_the_cpu_values(tmp_path):
    h5py = pytest.importorskip("h5py")
    data, label = arrays(seed=2)
    layer, _, _ = run_layer(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/g.h5" }}',
                            [data, label], device="gpu", num_tops=0)
    layer.close()
    with h5py.File(tmp_path / "g.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], data)
        np.testing.assert_array_equal(f["label"][()], label)
