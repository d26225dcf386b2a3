"""The prefetch pipeline: ordering, buffer reuse, clean shutdown, worker errors in the main thread."""
from __future__ import annotations

import threading
import time

import pytest

from dlsoft.blob import Blob
from dlsoft.data.prefetch import Prefetcher
from dlsoft.errors import DataError


class Counter:
    """Batch i is filled with the value i; optionally fails at batch ``fail_at``."""

    def __init__(self, shape=(2, 3), fail_at=None, delay=0.0):
        self.shapes = [shape, (shape[0],)]
        self.i = 0
        self.fail_at = fail_at
        self.delay = delay
        self.closed = False
        self.filled_ids = set()

    def fill(self, arrays):
        if self.i == self.fail_at:
            raise ValueError("disk on fire")
        time.sleep(self.delay)
        arrays[0][...] = self.i
        arrays[1][...] = -self.i
        self.filled_ids.add(id(arrays[0]))
        self.i += 1

    def close(self):
        self.closed = True


def tops_for(source):
    return [Blob(shape) for shape in source.shapes]


def test_batches_arrive_in_order_and_buffers_are_recycled():
    source = Counter()
    prefetcher = Prefetcher(source, depth=3)
    tops = tops_for(source)
    buffers = [tops[0].data, tops[1].data]
    for i in range(20):
        prefetcher.next_into(tops)
        assert (tops[0].data == i).all() and (tops[1].data == -i).all()
    assert tops[0].data is buffers[0] and tops[1].data is buffers[1]
    prefetcher.close()
    assert len(source.filled_ids) == 3  # only the three preallocated slots were ever filled
    assert source.closed


def test_close_joins_the_worker():
    prefetcher = Prefetcher(Counter(delay=0.01), depth=2)
    prefetcher.next_into(tops_for(prefetcher.source))
    prefetcher.close()
    assert not prefetcher._thread.is_alive()
    assert not [t for t in threading.enumerate() if t is prefetcher._thread]
    prefetcher.close()  # twice is fine
    with pytest.raises(DataError, match="closed"):
        prefetcher.next_into(tops_for(prefetcher.source))


def test_worker_exception_surfaces_in_main_thread():
    source = Counter(fail_at=2)
    prefetcher = Prefetcher(source, depth=4, name="layer 'mnist'")
    tops = tops_for(source)
    prefetcher.next_into(tops)
    prefetcher.next_into(tops)
    with pytest.raises(DataError, match=r"^layer 'mnist': ValueError: disk on fire$") as info:
        prefetcher.next_into(tops)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(DataError, match="disk on fire"):  # stays failed, never hangs
        prefetcher.next_into(tops)
    prefetcher.close()


def test_batch_shape_mismatch_names_both_shapes():
    source = Counter()
    prefetcher = Prefetcher(source, name="layer 'd'")
    tops = [Blob((2, 4)), Blob((2,), name="label")]
    tops[0].name = "data"
    with pytest.raises(DataError, match=r"layer 'd': batch of shape \(2, 3\) does not fit top 'data' of shape \(2, 4\)"):
        prefetcher.next_into(tops)
    prefetcher.close()


def test_prefetch_overlaps_slow_source():
    source = Counter(delay=0.02)
    prefetcher = Prefetcher(source, depth=2)
    tops = tops_for(source)
    prefetcher.next_into(tops)
    start = time.perf_counter()
    for _ in range(10):
        time.sleep(0.02)  # "compute" as long as a batch takes to make
        prefetcher.next_into(tops)
    elapsed = time.perf_counter() - start
    prefetcher.close()
    assert elapsed < 10 * 0.04 * 0.85, elapsed  # well under the serial sum


def test_process_exits_without_close():
    """A forgotten close (or Ctrl-C mid-training) must not hang interpreter exit."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, 'tests'); from test_data_prefetch import Counter; "
            "from dlsoft.data.prefetch import Prefetcher; p = Prefetcher(Counter(delay=0.01)); "
            "from dlsoft.blob import Blob; p.next_into([Blob(s) for s in p.source.shapes])")
    from pathlib import Path
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], timeout=30, check=False)
    assert result.returncode == 0
