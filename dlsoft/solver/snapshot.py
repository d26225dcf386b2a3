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

import atexit
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_numpy
from ..errors import DlsoftError, SolverError, WriteError
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
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SolverError(f"not a readable HDF5 solver state ({reason}): expected datasets iter, "
                          "current_step, learned_net and a group history/0, 1, ...", path=path) from None


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
    """Advance ``net``'s data layers from ``done`` to ``target`` batches delivered (readers skip, not decode)."""
    if target < done:
        log.warning("net #%d already read %d batches, the snapshot %d: data order not restored", index, done, target)
        return
    layers = [(layer, tops) for layer, tops in zip(net.layers, net.top_ids)
              if getattr(layer, "prefetcher", None) is not None]
    if layers and target > done:
        log.info("Restoring the data position of net #%d: skipping %d batches", index, target - done)
    for layer, _tops in layers:
        layer.prefetcher.skip(target - done)  # readers skip records without decoding them


def read_sidecar(path: str) -> dict | None:
    """The ``.dlstate.json`` beside a solverstate, checked for the fields restore uses (None if absent)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (ValueError, OSError) as exc:
        raise SolverError(f"unreadable dlsoft state ({' '.join(str(exc).split())}); delete it to resume "
                          "as Caffe would (data order and random state afresh)", path=path) from None
    batches = content.get("batches", {}) if isinstance(content, dict) else None
    problem = None
    if not isinstance(content, dict):
        problem = f"expected a JSON object, got {type(content).__name__}"
    elif not isinstance(content.get("random_state"), dict) or "state" not in content["random_state"]:
        problem = "no random_state (a numpy bit generator state)"
    elif not isinstance(batches, dict) or not _is_count(batches.get("train", 0)) \
            or not isinstance(batches.get("test", []), list) or not all(map(_is_count, batches.get("test", []))):
        problem = "batches must be {\"train\": n, \"test\": [n, ...]} with counts >= 0"
    if problem is None:
        try:  # on a scratch generator: restore must not fail half-way
            np.random.default_rng().bit_generator.state = content["random_state"]
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"random_state is not a numpy generator state ({type(exc).__name__}: {exc})"
    if problem is not None:
        raise SolverError(f"not a dlsoft state file: {problem}; delete it to resume as Caffe would",
                          path=path)
    return content


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ----------------------------------------------------------------------------- the prefix lock

#: Lock files this process holds -> how many of its solvers hold each (they may share one).
_held: dict[str, int] = {}


class PrefixLock:
    """An exclusive claim on a snapshot prefix: ``<prefix>.lock`` holding the owner's pid.

    Two runs writing one prefix would overwrite each other's snapshots and mix their
    files in one set, so another process is refused the prefix while the owner lives
    (solvers of one process, a train net and its resumption say, share it). A lock whose
    process is gone (killed, crashed) is stale and taken over. Released by
    :meth:`release` (``Solver.close``) or at exit.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.path = os.path.abspath(prefix + ".lock") if prefix else ""
        self.held = False

    def acquire(self) -> None:
        if self.path in _held:
            _held[self.path] += 1
            self.held = True
            return
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _lock_owner(self.path)
                if owner is None or (owner != os.getpid() and _alive(owner)):
                    who = f"pid {owner}" if owner else "a process that is starting"
                    raise SolverError(f"snapshot prefix '{self.prefix}' is in use by another run ({who}, lock "
                                      f"file {self.path}): wait for it to end, or give this run another "
                                      "snapshot_prefix") from None
                log.warning("removing the stale lock %s (its process %d is gone)", self.path, owner)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            except OSError:  # a read-only folder: nothing can be snapshotted there anyway
                return
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            _held[self.path] = 1
            atexit.register(self.release)
            remove_leftover_temp_files(self.prefix)
            return
        raise SolverError(f"cannot take the lock {self.path} on snapshot prefix '{self.prefix}'")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _held[self.path] -= 1
        if _held[self.path] > 0:
            return
        del _held[self.path]
        if _lock_owner(self.path) == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _lock_owner(path: str) -> int | None:
    """The pid in a lock file; None while its writer has not written it yet (a fresh, empty file)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        age = time.time() - os.path.getmtime(path)
    except OSError:
        return 0  # gone meanwhile: not held
    if text.isdigit():
        return int(text)
    return None if age < 5 else 0  # an empty lock older than a few seconds: its writer died


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_leftover_temp_files(prefix: str) -> list[str]:
    """Delete the temp files of snapshot writes that were killed (``.<prefix>_iter_N.<ext>.XXXX.tmp``)."""
    folder = os.path.dirname(os.path.abspath(prefix))
    start = f".{os.path.basename(prefix)}_iter_"
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(start) and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    if removed:
        log.info("removed %d temp file(s) left by interrupted snapshot writes in %s", len(removed), folder)
    return removed


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


# ----------------------------------------------------------------------------- failures

@contextlib.contextmanager
def reporting_failure(iteration: int, last_good: str | None):
    """Turn a WriteError of a snapshot's files into one naming the file and the last good snapshot."""
    try:
        yield
    except WriteError as exc:
        kept = f"the last good one is {last_good}" if last_good else "no earlier snapshot"
        error = WriteError(f"snapshot at iteration {iteration} failed: {exc}; {kept}")
        error.errno, error.strerror, error.filename = exc.errno, exc.strerror, exc.filename
        raise error from None


def keep_last_good(solver, exc: DlsoftError, forwards_before: list[int]) -> DlsoftError:
    """``exc`` (same type) extended by where the last good state went, snapshotting it if possible.

    Data errors strike in forward, before the iteration's update, so the weights, the
    history and the data positions at the iteration's start are a consistent state to
    resume from. Solver errors (a NaN loss) and failed snapshot writes come back as they are.
    """
    if isinstance(exc, (SolverError, WriteError)):
        return exc
    kept = "no snapshot written (no snapshot_prefix)"
    if solver.param.snapshot_prefix:
        done, solver._forwards = solver._forwards, forwards_before
        try:
            kept = f"last good state saved to {solver.snapshot()}"
        except (DlsoftError, OSError) as failure:
            kept = f"the snapshot of the last good state failed too ({' '.join(str(failure).split())})"
        finally:
            solver._forwards = done
    message = " ".join(str(exc.detail if exc.path is None else exc).split())
    return type(exc)(f"{message}; training stopped at iteration {solver.iter}, {kept}")


def claim_prefix(lock: PrefixLock, root: bool) -> None:
    """Take ``lock`` for this run unless it is held already, this is not the root rank (only
    the root snapshots), or there is no prefix folder to snapshot into."""
    if lock.held or not root or not lock.prefix or not os.path.isdir(os.path.dirname(lock.path)):
        return
    lock.acquire()
