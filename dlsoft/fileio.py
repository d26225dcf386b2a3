"""File helpers below the net definitions: atomic writes, binary messages, blobs.

Data readers, layers and the solver need these without importing the net reader
(``dlsoft.netdef.io`` re-exports them), so imports keep flowing one way.
"""
from __future__ import annotations

import errno
import math
import os
import tempfile
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from .errors import ParseError, WeightsError, WriteError
from .protos import caffe_pb2

M = TypeVar("M", bound=Message)
PathLike = str | os.PathLike


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Readers see either the old file or the complete new one; no temp file is left behind,
    even if writing fails.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise _write_error(path, exc) from None
        raise
    try:  # make the rename itself durable; not every platform can open a directory
        dfd = os.open(path.parent or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _write_error(path: Path, exc: OSError) -> WriteError:
    """A one-line error naming the file that could not be written (a full disk says so)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = ": free some space or write elsewhere" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
    error = WriteError(f"cannot write {path} ({reason}){hint}")
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(path)
    return error


def atomic_write_text(path: PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8, creating the folder if need be."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def hdf5_bytes(fill) -> bytes:
    """The bytes of an HDF5 file written by ``fill(h5py.File)`` in memory (then written
    with :func:`atomic_write_bytes`, so HDF5 files are atomic like every other)."""
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def read_blob(path: PathLike) -> np.ndarray:
    """Read a ``.binaryproto`` holding one BlobProto (a mean file) as a float32 array.

    Honours the legacy ``num/channels/height/width`` dimensions and ``double_data``.
    """
    proto = _parse_binary(_read_bytes(path), caffe_pb2.BlobProto, str(path))
    try:
        return blob_proto_to_array(proto)
    except WeightsError as e:
        raise WeightsError(e.detail, path=str(path)) from None


def write_blob(array: np.ndarray, path: PathLike) -> None:
    """Write ``array`` as one BlobProto (modern ``shape`` form) to a ``.binaryproto``."""
    atomic_write_bytes(path, array_to_blob_proto(array).SerializeToString())


def blob_proto_to_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """The data of a BlobProto as a C-contiguous float32 array of the blob's shape.

    As Caffe's ``Blob::FromProto``: legacy ``num/channels/height/width`` (if any is set)
    give a 4-D shape, else ``shape.dim``; ``double_data`` is used when present.
    """
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(int(d) for d in blob.shape.dim)
    if any(d < 0 for d in shape):
        raise WeightsError(f"blob shape {shape} has a negative dimension")
    values = blob.double_data if len(blob.double_data) else blob.data
    count = math.prod(shape)  # exact: an int64 product of huge dims wraps (to 0, say)
    if len(values) != count:
        raise WeightsError(f"blob of shape {shape} needs {count} values but holds {len(values)}")
    return np.array(values, dtype=np.float32).reshape(shape)


def array_to_blob_proto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto (modern ``shape`` form, packed float data, optional diff) for ``arr``."""
    arr = np.asarray(arr)
    parts = [_len_delimited(7, caffe_pb2.BlobShape(dim=[int(d) for d in arr.shape]).SerializeToString())]
    parts.append(_len_delimited(5, np.ascontiguousarray(arr, dtype="<f4").tobytes()))
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise ValueError(f"diff shape {diff.shape} differs from data shape {arr.shape}")
        parts.append(_len_delimited(6, np.ascontiguousarray(diff, dtype="<f4").tobytes()))
    # Serialized by hand: building the packed fields from raw bytes is far faster than
    # extending a repeated field value by value.
    return caffe_pb2.BlobProto.FromString(b"".join(parts))


def _len_delimited(field_number: int, payload: bytes) -> bytes:
    if not payload:
        return b""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_bytes(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ParseError("no such file", path=str(path)) from None
    except IsADirectoryError:
        raise ParseError("is a directory, not a file", path=str(path)) from None
    except OSError as e:
        raise ParseError(f"cannot read file ({e.strerror})", path=str(path)) from None


def _parse_binary(data: bytes, message_type: type[M], path: str) -> M:
    name = message_type.DESCRIPTOR.name
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ParseError(f"not a valid {name} binary file ({reason})", path=path) from None
    unknown = _unknown_top_level_fields(data, message_type.DESCRIPTOR)
    if unknown:
        raise ParseError(f"not a valid {name} binary file (unexpected field number(s) "
                         f"{', '.join(map(str, sorted(unknown)[:5]))} at top level)", path=path)
    return msg


def _unknown_top_level_fields(data: bytes, desc: Descriptor) -> set[int]:
    """Field numbers at the top level of ``data`` that ``desc`` does not define.

    A garbage file often decodes "successfully" into unknown fields; this catches it.
    """
    known = set(desc.fields_by_number)
    unknown: set[int] = set()
    pos, n = 0, len(data)
    try:
        while pos < n:
            key, pos = _read_varint(data, pos)
            number, wire = key >> 3, key & 7
            if number not in known:
                unknown.add(number)
            if wire == 0:
                _, pos = _read_varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _read_varint(data, pos)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                unknown.add(number)
                break
    except IndexError:
        unknown.add(-1)
    return unknown


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
