"""Applying the memory plan (:func:`graph.plan_memory`) to a built Net's blobs.

The Net groups blobs that share storage by construction (Split tops, Flatten/Reshape
views) into storages at build time; the plan places storages, and applying it hands
each planned storage's blobs one shared buffer.
"""
from __future__ import annotations

import numpy as np

from ..blob import available_bytes, format_bytes
from ..errors import NetDefinitionError
from . import graph


def setup(net, enabled: bool, keep_blobs: tuple[str, ...]) -> None:
    """At build: group the blobs that share storage by construction (Split tops,
    Flatten/Reshape views) into storages, and apply the plan if ``enabled``. A plan is
    for whole forward passes: other intermediate blobs are overwritten by later layers."""
    groups: dict[int, list[str]] = {}
    for name, blob in net.blobs.items():
        groups.setdefault(id(blob.data_storage), []).append(name)
    net._storages = list(groups.values())
    net.memory_plan = None
    net._keep_blobs = keep_blobs
    if enabled:
        try:
            net.apply_memory_plan(keep_blobs)
        except NetDefinitionError:
            net.close()  # stop the data layers' prefetch threads of a net never returned
            raise


def summary_line(net) -> str | None:
    """What the plan saves, for ``Net.summary`` (None for a net that runs backward)."""
    if any(net.layer_need_backward):
        return None
    plan = net.memory_plan or net.plan_memory()
    state = "applied" if net.memory_plan else "Net(..., memory_plan=True)"
    return (f"activations {plan.unplanned * 4 / 2**20:.2f} MiB; with the memory plan "
            f"{plan.planned * 4 / 2**20:.2f} MiB ({state})")


def plan_for(net, keep_blobs: tuple[str, ...]) -> "graph.MemoryPlan":
    """The plan for ``net``'s blobs as they are now; inputs, outputs and ``keep_blobs`` keep their own."""
    key_of = {name: k for k, names in enumerate(net._storages) for name in names}
    blob_key = {id(net.blobs[name]): k for name, k in key_of.items()}
    steps = [([blob_key[id(b)] for b in bottoms], [blob_key[id(t)] for t in tops])
             for bottoms, tops in zip(net.bottom_ids, net.top_ids)]
    sizes = {k: max(net.blobs[name].count for name in names) for k, names in enumerate(net._storages)}
    for name in keep_blobs:
        if name not in net.blobs:
            raise NetDefinitionError(f"memory plan: no blob named '{name}' to keep")
    pinned = {key_of[name] for name in (*net.inputs, *net.outputs, *keep_blobs)}
    return graph.plan_memory(steps, sizes, pinned)


def apply(net, keep_blobs: tuple[str, ...]) -> "graph.MemoryPlan":
    """Plan and give each planned storage's blobs their shared buffer (the Net reshapes after)."""
    if any(net.layer_need_backward):
        layer = net.layer_names[net.layer_need_backward.index(True)]
        raise NetDefinitionError(f"memory plan: net '{net.name}' runs backward (layer '{layer}' needs it), "
                                 "and backward reads the activations forward wrote; plan only nets "
                                 "that run forward only (TEST/deploy, without force_backward)")
    plan = plan_for(net, keep_blobs)
    with net.device.activate():
        buffers = [net.device.xp.zeros(n, dtype=np.float32) for n in plan.slots]
    for key, names in enumerate(net._storages):
        if key in plan.slot_of:
            for name in names:
                net.blobs[name].use_data_storage(buffers[plan.slot_of[key]])
    return plan


def check_request(net, blobs, start: str | None) -> None:
    """A planned net's forward must start at the first layer and return only kept blobs."""
    if start:
        raise NetDefinitionError(f"forward(start='{start}'): net '{net.name}' has a memory plan, so a "
                                 "pass must start at the first layer (build it without memory_plan)")
    kept = {*net.inputs, *net.outputs, *net._keep_blobs}
    for name in blobs:
        if name not in kept:
            raise NetDefinitionError(f"forward(blobs=['{name}']): the memory plan reuses that blob's "
                                     f"storage; build the net with keep_blobs=['{name}'] to read it")


def check_fits(net) -> None:
    """Refuse a net whose activations (with their diffs when it trains) cannot fit.

    Each blob was checked alone when it was shaped; this is the whole net. Checked once
    the net is built and before the first forward writes the activations: their pages
    are not touched yet, so the machine's available memory does not count them yet
    (the parameters, filled already, are counted there and left out here).
    """
    params = {id(blob.storage) for blob in net.learnable_params}
    seen, values = set(), 0
    for blob in net.blobs.values():
        key = id(blob.storage)
        if blob.storage is not None and key not in seen and key not in params:
            seen.add(key)
            values += blob.storage.size
    needed = values * 4 * (2 if any(net.layer_need_backward) else 1)
    if needed <= 1 << 28:  # 256 MiB: never worth refusing
        return
    available = available_bytes(net.device)
    if available is not None and needed > available:
        raise NetDefinitionError(
            f"net '{net.name}': its blobs need {format_bytes(needed)} ({values:,} float32 values"
            f"{' and their diffs' if any(net.layer_need_backward) else ''}), {format_bytes(available)} are "
            f"available on {net.device}: reduce the batch size or the input size", path=net.source)
