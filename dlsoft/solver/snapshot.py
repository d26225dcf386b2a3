"""Snapshot files, named and laid out as Caffe writes them, and written atomically.

A snapshot at iteration N is a pair:

- ``<prefix>_iter_N.caffemodel`` (binary NetParameter) or ``.caffemodel.h5`` (HDF5:
  ``data/<layer>/<i>``, and ``diff/<layer>/<i>`` with ``snapshot_diff``);
- ``<prefix>_iter_N.solverstate`` (binary SolverState: ``iter``, ``learned_net``,
  ``history``, ``current_step``) or ``.solverstate.h5`` (datasets ``iter``,
  ``learned_net``, ``current_step`` and group ``history/<i>``).

dlsoft adds a third file, ``<prefix>_iter_N.dlstate.json``: what Caffe does not store
but exact resumption needs (the random generator state and how many batches each
net's data layers have delivered). Real Caffe ignores it; a state without it restores
as Caffe would.

Every file goes through a temporary file, fsync and rename, in the order weights,
sidecar, solverstate: the solverstate is written last, so whenever it exists the files
it refers to are complete, and an interrupted snapshot leaves the previous pair intact.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_numpy
from ..errors import SolverError
from ..netdef import io
from ..protos import caffe_pb2

log = logging.getLogger(__name__)

HDF5 = caffe_pb2.SolverParameter.HDF5
BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """Caffe's ``SnapshotFilename``: ``<prefix>_iter_<N><extension>``."""
    return f"{prefix}_iter_{iteration}{extension}"


def model_extension(fmt: int) -> str:
    return ".caffemodel.h5" if fmt == HDF5 else ".caffemodel"


def state_extension(fmt: int) -> str:
    return ".solverstate.h5" if fmt == HDF5 else ".solverstate"


def sidecar_path(state_path: str) -> str:
    """The dlsoft sidecar next to a solverstate: ``<prefix>_iter_N.dlstate.json``."""
    for extension in (".solverstate.h5", ".solverstate"):
        if state_path.endswith(extension):
            return state_path[: -len(extension)] + ".dlstate.json"
    return state_path + ".dlstate.json"


@dataclass
class SolverStateData:
    """What a ``.solverstate`` holds, whichever format it came from."""

    iter: int = 0
    learned_net: str = ""
    current_step: int = 0
    history: list = field(default_factory=list)  # float32 numpy arrays


# ----------------------------------------------------------------------------- writing

def write_model(net, path: str, fmt: int, write_diff: bool = False) -> None:
    """Write the net's learnable blobs as a caffemodel (binary or HDF5), atomically."""
    if fmt == HDF5:
        io.atomic_write_bytes(path, net.to_hdf5_bytes(write_diff))
    else:
        io.atomic_write_bytes(path, net.to_proto(write_diff=write_diff).SerializeToString())


def write_state(path: str, fmt: int, state: SolverStateData) -> None:
    """Write a solverstate (binary SolverState or Caffe's HDF5 layout), atomically."""
    if fmt == HDF5:
        io.atomic_write_bytes(path, io.hdf5_bytes(lambda f: _fill_state_hdf5(f, state)))
        return
    proto = caffe_pb2.SolverState(iter=state.iter, learned_net=state.learned_net,
                                  current_step=state.current_step)
    for array in state.history:
        proto.history.add().CopyFrom(io.array_to_blob_proto(to_numpy(array)))
    io.atomic_write_bytes(path, proto.SerializeToString())


def write_sidecar(path: str, content: dict) -> None:
    io.atomic_write_bytes(path, json.dumps(content, sort_keys=True).encode("utf-8"))


def _fill_state_hdf5(f, state: SolverStateData) -> None:
    f.create_dataset("iter", data=np.int32(state.iter))
    f.create_dataset("learned_net", data=np.bytes_(state.learned_net.encode("utf-8")))
    f.create_dataset("current_step", data=np.int32(state.current_step))
    history = f.create_group("history")
    for i, array in enumerate(state.history):
        history.create_dataset(str(i), data=to_numpy(array))


# ----------------------------------------------------------------------------- reading

def read_state(path: str) -> SolverStateData:
    """Read a ``.solverstate`` (binary) or ``.solverstate.h5`` file."""
    if not os.path.isfile(path):
        raise SolverError("solver state file not found", path=path)
    if path.endswith(".h5"):
        return _read_state_hdf5(path)
    proto = io.read_solver_state(path)
    return SolverStateData(iter=proto.iter, learned_net=proto.learned_net, current_step=proto.current_step,
                           history=[io.blob_proto_to_array(blob) for blob in proto.history])


def _read_state_hdf5(path: str) -> SolverStateData:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            learned = f["learned_net"][()] if "learned_net" in f else b""
            history = f.get("history", {})
            return SolverStateData(
                iter=int(f["iter"][()]),
                learned_net=learned.decode("utf-8") if isinstance(learned, bytes) else str(learned),
                current_step=int(f["current_step"][()]) if "current_step" in f else 0,
                history=[np.asarray(history[str(i)], dtype=np.float32) for i in range(len(history))])
    except (OSError, KeyError) as exc:
        raise SolverError(f"not a readable HDF5 solver state ({exc})", path=path) from None


def global_batch(net, ranks: int) -> int | None:
    """Records one train forward reads over all ranks (the first sharded data layer's batch × ranks)."""
    for layer, tops in zip(net.layers, net.top_ids):
        if getattr(layer, "shardable", False) and tops and tops[0].shape:
            return int(tops[0].shape[0]) * ranks
    return None


def data_position(forwards: list[int], ranks: int, records_per_batch: int | None) -> dict:
    """The sidecar's data position: batches each net's data layers delivered, and training records.

    In data-parallel training each train forward reads one global batch (every rank's
    chunk), so the count is in global batches and resumes on any number of ranks; the
    records let a run with another global batch size find its place.
    """
    position = {"batches": {"train": forwards[0], "test": forwards[1:]}, "ranks": ranks}
    if records_per_batch:
        position["train_records"] = forwards[0] * records_per_batch
    return position


def train_batches(sidecar: dict, records_per_batch: int | None) -> int:
    """Train batches to skip on resume: the sidecar's count, or its records when the global batch changed."""
    batches = int(sidecar.get("batches", {}).get("train", 0))
    records = sidecar.get("train_records")
    if records is None or not records_per_batch or records == batches * records_per_batch:
        return batches
    if records % records_per_batch:
        log.warning("the snapshot read %d training records, not a whole number of this run's global batches "
                    "of %d: the data position is rounded down", records, records_per_batch)
    return records // records_per_batch


def fast_forward(net, index: int, done: int, target: int) -> None:
    """Advance ``net``'s data layers from ``done`` to ``target`` batches delivered (reading and dropping)."""
    if target < done:
        log.warning("net #%d already read %d batches, the snapshot %d: data order not restored", index, done, target)
        return
    layers = [(layer, tops) for layer, tops in zip(net.layers, net.top_ids)
              if getattr(layer, "prefetcher", None) is not None]
    if layers and target > done:
        log.info("Restoring the data position of net #%d: skipping %d batches", index, target - done)
    for layer, tops in layers:
        skip = getattr(layer, "skip_batches", None)
        if skip is not None:
            skip(target - done)
        else:
            for _ in range(target - done):
                layer.forward([], tops)


def read_sidecar(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise SolverError(f"unreadable dlsoft state ({exc})", path=path) from None


def resolve_learned_net(learned_net: str, state_path: str) -> str:
    """Find the weights a solverstate names: as written, else next to the solverstate.

    Caffe stores the path it wrote (relative to its working directory); a snapshot moved
    together with its caffemodel is still found by the file name in the state's folder.
    """
    folder = os.path.dirname(os.path.abspath(state_path))
    for candidate in (learned_net, os.path.join(folder, learned_net),
                      os.path.join(folder, os.path.basename(learned_net))):
        if os.path.isfile(candidate):
            return candidate
    raise SolverError(f"learned_net '{learned_net}' not found (also looked in {folder})", path=state_path)
