"""The Layer interface, Caffe's, in Python.

A layer is a small class registered under its Caffe type name. The net calls, in order:

``setup(bottoms, tops)``
    once: read ``self.param`` (a ``caffe_pb2.LayerParameter``), create learnable blobs
    in ``self.blobs`` (filled by their fillers), check bottom shapes.
``reshape(bottoms, tops)``
    at setup and whenever input shapes change: set top shapes, size work buffers.
``forward(bottoms, tops)``
    compute tops from bottoms; dispatches to ``forward_cpu`` or ``forward_gpu``.
``backward(tops, propagate_down, bottoms)``
    from ``top.diff`` compute ``bottom.diff`` for the bottoms whose ``propagate_down``
    flag is set, and *accumulate* parameter gradients into ``self.blobs[i].diff`` when
    ``self.param_propagate_down[i]`` is set (the solver zeroes them each iteration).

Layer code gets its array module from the blobs (``bottoms[0].xp``), never by importing
cupy, so one ``forward_cpu`` body usually serves both devices: the default
``forward_gpu``/``backward_gpu`` simply call the CPU code with cupy arrays. Layers
where a fused kernel matters override the GPU methods.

A layer never sees the graph: loss weights, in-place wiring, splits and need-backward
analysis are the net's business.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

from ..backend import CPU, Device
from ..blob import Blob
from ..errors import NetDefinitionError

TRAIN, TEST = "TRAIN", "TEST"


class Layer:
    """Base class of every layer. Subclasses set ``type`` and override the compute methods.

    Class attributes describe the layer to the graph, as Caffe's virtual methods do:
    bottom/top counts (``-1`` for "any"), whether the net may create missing tops
    (``auto_top_blobs``), whether a bottom may receive gradient (``allow_backward_to``).
    """

    type: ClassVar[str] = ""
    exact_num_bottoms: ClassVar[int] = -1
    min_bottoms: ClassVar[int] = -1
    max_bottoms: ClassVar[int] = -1
    exact_num_tops: ClassVar[int] = -1
    min_tops: ClassVar[int] = -1
    max_tops: ClassVar[int] = -1
    equal_num_bottom_top: ClassVar[bool] = False
    auto_top_blobs: ClassVar[bool] = False
    #: True for layers with no backward (data layers, metrics, detection output).
    forward_only: ClassVar[bool] = False
    #: True when tops may be the bottoms themselves (top name == bottom name).
    supports_in_place: ClassVar[bool] = False
    #: The loss weight of top 0 when the LayerParameter gives none (Caffe's LossLayer: 1).
    default_loss_weight: ClassVar[float] = 0.0

    def __init__(self, param, phase: str = TRAIN, device: Device = CPU):
        self.param = param
        self.name: str = param.name
        self.phase = phase
        self.device = device
        self.blobs: list[Blob] = []
        self.param_propagate_down: list[bool] = []

    @property
    def param_str(self) -> str:
        """``python_param.param_str``: where a plugin layer's own parameters are written."""
        return self.param.python_param.param_str

    # ---- the interface ------------------------------------------------------------
    def initialize(self, bottoms: Sequence[Blob], tops: Sequence[Blob]) -> None:
        """Caffe's ``Layer::SetUp``: :meth:`check_blob_counts`, :meth:`setup`, :meth:`reshape`."""
        self.check_blob_counts(len(bottoms), len(tops))
        self.setup(bottoms, tops)
        self.reshape(bottoms, tops)

    def num_auto_tops(self, num_tops: int) -> int:
        """How many anonymous tops to add to ``num_tops`` given ones (``auto_top_blobs``)."""
        wanted = max(self.exact_num_tops, self.min_tops)
        return max(wanted - num_tops, 0) if self.auto_top_blobs else 0

    def check_blob_counts(self, num_bottoms: int, num_tops: int) -> None:
        """NetDefinitionError unless the counts fit the class's limits (``Layer::CheckBlobCounts``)."""
        checks = (
            (self.exact_num_bottoms >= 0 and num_bottoms != self.exact_num_bottoms,
             f"takes {self.exact_num_bottoms} bottom blob(s), got {num_bottoms}"),
            (self.min_bottoms >= 0 and num_bottoms < self.min_bottoms,
             f"takes at least {self.min_bottoms} bottom blob(s), got {num_bottoms}"),
            (self.max_bottoms >= 0 and num_bottoms > self.max_bottoms,
             f"takes at most {self.max_bottoms} bottom blob(s), got {num_bottoms}"),
            (self.exact_num_tops >= 0 and num_tops != self.exact_num_tops,
             f"produces {self.exact_num_tops} top blob(s), got {num_tops}"),
            (self.min_tops >= 0 and num_tops < self.min_tops,
             f"produces at least {self.min_tops} top blob(s), got {num_tops}"),
            (self.max_tops >= 0 and num_tops > self.max_tops,
             f"produces at most {self.max_tops} top blob(s), got {num_tops}"),
            (self.equal_num_bottom_top and num_bottoms != num_tops,
             f"needs as many tops as bottoms, got {num_bottoms} and {num_tops}"),
        )
        for failed, message in checks:
            if failed:
                raise self.error(message)

    def setup(self, bottoms: Sequence[Blob], tops: Sequence[Blob]) -> None:
        """Read parameters and create ``self.blobs``. Default: nothing to set up."""

    def reshape(self, bottoms: Sequence[Blob], tops: Sequence[Blob]) -> None:
        """Set the shapes of ``tops`` from ``bottoms``. Must be overridden."""
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottoms: Sequence[Blob], tops: Sequence[Blob]) -> None:
        if self.device.is_gpu:
            self.forward_gpu(bottoms, tops)
        else:
            self.forward_cpu(bottoms, tops)

    def backward(self, tops: Sequence[Blob], propagate_down: Sequence[bool], bottoms: Sequence[Blob]) -> None:
        if self.device.is_gpu:
            self.backward_gpu(tops, propagate_down, bottoms)
        else:
            self.backward_cpu(tops, propagate_down, bottoms)

    def forward_cpu(self, bottoms: Sequence[Blob], tops: Sequence[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.forward_cpu")

    def backward_cpu(self, tops: Sequence[Blob], propagate_down: Sequence[bool], bottoms: Sequence[Blob]) -> None:
        if any(propagate_down):
            raise NotImplementedError(f"layer type {self.type} has no backward")

    def forward_gpu(self, bottoms: Sequence[Blob], tops: Sequence[Blob]) -> None:
        """Default GPU path: the CPU code, which runs on cupy arrays unchanged."""
        self.forward_cpu(bottoms, tops)

    def backward_gpu(self, tops: Sequence[Blob], propagate_down: Sequence[bool], bottoms: Sequence[Blob]) -> None:
        """Default GPU path: the CPU code, which runs on cupy arrays unchanged."""
        self.backward_cpu(tops, propagate_down, bottoms)

    def allow_backward_to(self, bottom_index: int) -> bool:
        """Whether gradient may flow into this bottom (False for labels, for example)."""
        return True

    def close(self) -> None:
        """Release resources (prefetch threads, files). Called when the net is closed."""

    def check_inputs(self, bottoms) -> None:
        """After a non-finite loss: raise the error a host-side look at the bottoms finds (a
        label out of range, say), so a device path can skip the check that would wait."""

    # ---- helpers for subclasses -----------------------------------------------------
    def make_blob(self, shape: Sequence[int], role: str = "") -> Blob:
        """A new blob on this layer's device (for learnable parameters or buffers), named
        ``<layer>.<role>`` (``conv1.weight``): the one naming of parameter blobs."""
        return Blob(shape, self.device, name=f"{self.name}.{role}" if role else self.name)

    def error(self, message: str) -> NetDefinitionError:
        """A NetDefinitionError naming this layer: ``raise self.error("...")``."""
        return NetDefinitionError(f"layer '{self.name}' (type {self.type}): {message}")

    @property
    def xp(self):
        return self.device.xp

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
