"""The random source shared by fillers, dropout, shuffling and random crops.

Caffe seeds one generator per process from ``random_seed``; dlsoft does the same, so
two runs with the same seed and device produce the same numbers.
"""
from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()
_seed: int | None = None
_stream = 0
_gpu_rngs: dict = {}


def set_seed(seed: int | None) -> None:
    """Reseed the host generator (and the GPU generators when cupy is in use)."""
    global _rng, _seed, _stream
    _seed = None if seed is None or seed < 0 else int(seed)
    _stream = 0
    _rng = np.random.default_rng(_seed)
    _gpu_rngs.clear()


def rng() -> np.random.Generator:
    """The process-wide numpy Generator."""
    return _rng


def xp_rng(xp):
    """A generator for the array module ``xp``: numpy's or a seeded cupy one."""
    if xp is np:
        return _rng
    key = id(xp.cuda.Device())
    if key not in _gpu_rngs:
        seed = _seed if _seed is not None else int(_rng.integers(2**31))
        _gpu_rngs[key] = xp.random.default_rng(seed + 7919 * _stream)
    return _gpu_rngs[key]


def split(stream: int) -> None:
    """Move this process to stream ``stream`` of the current generator (stream 0: stay).

    Data-parallel ranks share one seed, so that their data layers shuffle and crop alike;
    rank r > 0 then calls ``split(r)`` so that dropout and other per-iteration draws differ
    between ranks: the host generator jumps ahead by r·2**64 draws (PCG64's ``advance``),
    the GPU generators are reseeded apart. Rank 0's state is untouched (it is the one
    snapshots record).
    """
    global _stream
    if not stream:
        return
    _stream = int(stream)
    _rng.bit_generator.advance(_stream << 64)
    _gpu_rngs.clear()


def get_state():
    """The host generator's state, for snapshots."""
    return _rng.bit_generator.state


def set_state(state) -> None:
    _rng.bit_generator.state = state
