"""Net: a built static graph of layers and blobs, with pycaffe's API.

Building a net (``Net.__init__``) follows Caffe's ``Net::Init``: filter layers by
NetState, insert splits, check producers, create each layer and its top blobs in
order (a top named like one of the layer's bottoms is that very blob: in-place), set
the layer up and infer shapes, attach loss weights, share parameters named by
ParamSpec, then work out which layers need backward.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from ..backend import Device, parse_device, to_numpy
from ..blob import Blob, available_bytes, format_bytes
from ..data.shard import WHOLE, Shard
from ..errors import DlsoftError, NetDefinitionError, WeightsError
from ..layers import Layer, create_layer, layer_class
from ..protos import caffe_pb2
from . import graph, io, memory, weights

log = logging.getLogger(__name__)

PHASE_NAMES = {caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST"}


class Net:
    """A network built from a prototxt/YAML file or a NetParameter.

    ``Net(model, phase="TEST", weights=None, stages=(), level=0, device="cpu", shard=None,
    memory_plan=False, keep_blobs=())``

    Attributes mirror pycaffe: ``blobs`` (name -> Blob), ``params`` (layer name -> list
    of Blobs), ``layers``, ``layer_names``, ``inputs``, ``outputs``. Blob arrays live on
    the net's device (numpy on the CPU, cupy on a GPU). ``shard`` (a
    :class:`~dlsoft.data.shard.Shard`) makes the data layers read one rank's share.

    ``memory_plan=True`` (forward-only nets) lets blobs whose lifetimes do not overlap share
    storage (:mod:`.memory`); inputs, outputs and ``keep_blobs`` keep their values.
    """

    def __init__(self, model, phase: str = "TRAIN", weights: str | Path | None = None,
                 stages: Iterable[str] = (), level: int | None = None, device="cpu",
                 shard: Shard | None = None, memory_plan: bool = False, keep_blobs: Iterable[str] = ()):
        if isinstance(model, (str, Path)):
            self.source: str | None = str(model)
            net_param = io.read_net(model)
        elif isinstance(model, caffe_pb2.NetParameter):
            self.source = None
            net_param = model
            io.check_required(net_param)  # files are checked when read
        else:
            raise TypeError(f"model must be a path or a NetParameter, not {type(model).__name__}")
        self.device: Device = parse_device(device)
        self.name = net_param.name
        state = graph.make_state(net_param, phase, level, tuple(stages))
        self.phase = PHASE_NAMES[state.phase]
        filtered = graph.filter_net(net_param, state, self.source)
        if not filtered.layer:  # Caffe builds an empty net and trains nothing; say so instead
            why = (f": all {len(net_param.layer)} are excluded by include/exclude rules" if net_param.layer
                   else (f" (it has {len(net_param.layers)} V1 'layers', which did not upgrade)"
                         if net_param.layers else ""))
            raise NetDefinitionError(f"net '{net_param.name}' has no layers for phase {self.phase}{why}",
                                     path=self.source)
        graph.check_bottoms(filtered, self.source)
        self.net_param = graph.insert_splits(filtered)
        self._inserted_splits = {layer.name for layer in self.net_param.layer} - \
            {layer.name for layer in filtered.layer}
        self.force_backward = net_param.force_backward
        self.shard: Shard = shard or WHOLE
        self._after_backward: list[Callable[[int], None]] = []

        self.layers: list[Layer] = []
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict()
        self.bottom_ids: list[list[Blob]] = []
        self.top_ids: list[list[Blob]] = []
        self.bottom_names: "OrderedDict[str, list[str]]" = OrderedDict()
        self.top_names: "OrderedDict[str, list[str]]" = OrderedDict()
        self.blob_loss_weights: dict[str, float] = {}
        self._loss_tops: list[tuple[Blob, float]] = []
        self._param_owner: dict[str, tuple[int, int]] = {}
        self.learnable_params: list[Blob] = []
        self._param_layer: list[int] = []
        self.params_lr: list[float] = []
        self.params_weight_decay: list[float] = []
        self._reshaped_for: list[tuple] = []
        with self.device.activate():
            self._build()
        self._analyse_backward()
        memory.check_fits(self)
        memory.setup(self, memory_plan, tuple(keep_blobs))
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------ building
    def _where(self, layer_param) -> dict:
        return {"path": self.source, "line": graph.locate_layer(self.source, layer_param.name)}

    def _check_types(self) -> None:
        """Every layer whose type has no implementation, reported at once (file:line, name, hint)."""
        missing = []
        for layer_param in self.net_param.layer:
            try:
                layer_class(layer_param.type)
            except NetDefinitionError as exc:
                missing.append((layer_param, exc.detail))
        if not missing:
            return
        where = [self._where(lp) for lp, _ in missing]
        parts = [f"layer '{lp.name}': {why}" for lp, why in missing]
        for i in range(1, len(parts)):
            if where[i]["path"] is not None:
                line = f":{where[i]['line']}" if where[i]["line"] is not None else ""
                parts[i] = f"{where[i]['path']}{line}: {parts[i]}"
        detail = "; ".join(parts) + (f" ({len(parts)} layers in all)" if len(parts) > 1 else "")
        raise NetDefinitionError(detail, **where[0])

    def _build(self) -> None:
        self._check_types()
        available: dict[str, Blob] = {}
        input_names: list[str] = []
        for layer_param in self.net_param.layer:
            try:
                layer = create_layer(layer_param, phase=self.phase, device=self.device)
            except DlsoftError as exc:
                raise NetDefinitionError(f"layer '{layer_param.name}': {exc.detail}", **self._where(layer_param)) from None
            if getattr(layer, "shardable", False):
                layer.shard = self.shard  # before setup: the source is built there
            bottoms = [available[name] for name in layer_param.bottom]
            tops = []
            for name in layer_param.top:
                if name in layer_param.bottom:  # in-place: the top is the bottom blob itself
                    tops.append(available[name])
                    continue
                if name in self.blobs:
                    raise NetDefinitionError(f"layer '{layer_param.name}': top '{name}' is produced by "
                                             "more than one layer", **self._where(layer_param))
                blob = Blob((), self.device, name=name)
                self.blobs[name] = blob
                tops.append(blob)
            self._add_auto_tops(layer, tops)
            try:
                layer.initialize(bottoms, tops)
            except DlsoftError as exc:
                detail = exc.detail if exc.path is None else str(exc)
                if f"layer '{layer.name}'" not in detail:
                    detail = f"layer '{layer.name}' (type {layer.type}): {detail}"
                raise type(exc)(detail, **self._where(layer_param)) from None
            except MemoryError as exc:  # a work buffer the shapes make too large for this machine
                available = available_bytes(self.device)
                have = f" ({format_bytes(available)} available)" if available is not None else ""
                raise NetDefinitionError(f"layer '{layer.name}' (type {layer.type}): out of memory setting it "
                                         f"up for bottoms {[b.shape for b in bottoms]}{have}: "
                                         f"{' '.join(str(exc).split())}; reduce the batch or input size",
                                         **self._where(layer_param)) from None
            for name in layer_param.bottom:
                available.pop(name, None)
            for name, blob in zip(layer_param.top, tops):
                available[name] = blob
            if layer.type == "Input":
                input_names.extend(layer_param.top)
            self.layers.append(layer)
            self.bottom_ids.append(bottoms)
            self.top_ids.append(tops)
            self.bottom_names[layer.name] = list(layer_param.bottom)
            self.top_names[layer.name] = [blob.name for blob in tops]
            self._reshaped_for.append(tuple(b.shape for b in bottoms))
            self._attach_loss_weights(layer, layer_param, tops)
            self._append_params(len(self.layers) - 1, layer)
        self.inputs: list[str] = input_names
        self.outputs: list[str] = list(available)
        self.layer_names = [layer.name for layer in self.layers]
        self.layer_dict = OrderedDict((layer.name, layer) for layer in self.layers)
        self.params: "OrderedDict[str, list[Blob]]" = OrderedDict(
            (layer.name, layer.blobs) for layer in self.layers if layer.blobs)

    def _add_auto_tops(self, layer: Layer, tops: list[Blob]) -> None:
        """Anonymous tops a layer insists on (``auto_top_blobs``), named ``(layer:k)``."""
        for k in range(len(tops), len(tops) + layer.num_auto_tops(len(tops))):
            name = f"({layer.name}:{k})"
            blob = Blob((), self.device, name=name)
            self.blobs[name] = blob
            tops.append(blob)

    def _attach_loss_weights(self, layer: Layer, layer_param, tops: list[Blob]) -> None:
        weights = list(layer_param.loss_weight)
        if not weights and layer.default_loss_weight and tops:
            weights = [layer.default_loss_weight]  # Caffe's LossLayer default: the first top is the loss
        if len(weights) > len(tops):
            raise NetDefinitionError(f"layer '{layer.name}': {len(weights)} loss_weight values for "
                                     f"{len(tops)} tops", **self._where(layer_param))
        for blob, weight in zip(tops, weights):
            if weight:
                self.blob_loss_weights[blob.name] = float(weight)
                self._loss_tops.append((blob, float(weight)))

    def _append_params(self, layer_index: int, layer: Layer) -> None:
        """Register the layer's blobs as net parameters, sharing those named alike."""
        specs = layer.param.param  # read after setup: layers may add specs (BatchNorm does)
        if len(specs) > len(layer.blobs):
            raise NetDefinitionError(f"layer '{layer.name}' (type {layer.type}): {len(specs)} param specs "
                                     f"for {len(layer.blobs)} parameter blobs", **self._where(layer.param))
        layer.param_propagate_down = []
        for i, blob in enumerate(layer.blobs):
            spec = specs[i] if i < len(specs) else caffe_pb2.ParamSpec()
            lr_mult = spec.lr_mult if spec.HasField("lr_mult") else 1.0
            decay_mult = spec.decay_mult if spec.HasField("decay_mult") else 1.0
            layer.param_propagate_down.append(lr_mult != 0)
            owner = self._param_owner.get(spec.name) if spec.name else None
            if owner is None:
                if spec.name:
                    self._param_owner[spec.name] = (layer_index, i)
                self.learnable_params.append(blob)
                self._param_layer.append(layer_index)
                self.params_lr.append(lr_mult)
                self.params_weight_decay.append(decay_mult)
                continue
            owner_blob = self.layers[owner[0]].blobs[owner[1]]
            strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
            if (strict and owner_blob.shape != blob.shape) or owner_blob.count != blob.count:
                raise NetDefinitionError(
                    f"layer '{layer.name}': shared param '{spec.name}' has shape {blob.shape} here but "
                    f"{owner_blob.shape} in layer '{self.layers[owner[0]].name}'", **self._where(layer.param))
            blob.share_data(owner_blob)
            blob.share_diff(owner_blob)
            owner_index = self.learnable_params.index(owner_blob)
            if spec.HasField("lr_mult") and self.params_lr[owner_index] != lr_mult:
                raise NetDefinitionError(f"layer '{layer.name}': shared param '{spec.name}' has lr_mult "
                                         f"{lr_mult}, its owner {self.params_lr[owner_index]}",
                                         **self._where(layer.param))

    def _analyse_backward(self) -> None:
        """Caffe's need-backward analysis: skip layers no loss depends on."""
        n = len(self.layers)
        needs_grad: dict[int, bool] = {}  # id(blob) -> does its value depend on something learnable
        self.layer_need_backward = [False] * n
        self.bottom_need_backward: list[list[bool]] = []
        for i, layer in enumerate(self.layers):
            layer_param = layer.param
            flags = []
            for j, blob in enumerate(self.bottom_ids[i]):
                allowed = (j >= len(layer_param.propagate_down) or layer_param.propagate_down[j])
                flags.append(needs_grad.get(id(blob), False) and allowed and layer.allow_backward_to(j))
            need = any(flags) or any(layer.param_propagate_down)
            if layer.forward_only:
                need, flags = False, [False] * len(flags)
            for blob in self.top_ids[i]:
                needs_grad[id(blob)] = need
            self.layer_need_backward[i] = need
            self.bottom_need_backward.append(flags)
        # Walk back from the losses (Caffe's order): layers that reach no loss, or whose
        # tops get no gradient from their consumers, need no backward.
        under_loss: set[int] = {id(blob) for blob, _ in self._loss_tops}
        skip: set[int] = set()
        for i in reversed(range(n)):
            tops, bottoms = self.top_ids[i], self.bottom_ids[i]
            contributes = any(id(blob) in under_loss for blob in tops)
            if all(id(blob) in skip for blob in tops) and self.layer_need_backward[i]:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(bottoms)
            if not contributes:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(bottoms)
            for j, blob in enumerate(bottoms):
                if contributes:
                    under_loss.add(id(blob))
                if not self.bottom_need_backward[i][j]:
                    skip.add(id(blob))
        if self.force_backward:
            for i, layer in enumerate(self.layers):
                if layer.forward_only:
                    continue
                self.bottom_need_backward[i] = [
                    flag or layer.allow_backward_to(j) for j, flag in enumerate(self.bottom_need_backward[i])]
                self.layer_need_backward[i] = self.layer_need_backward[i] or any(self.bottom_need_backward[i]) \
                    or bool(layer.blobs)
        for i, layer in enumerate(self.layers):
            if not self.layer_need_backward[i]:
                log.debug("%s does not need backward computation.", layer.name)

    # ------------------------------------------------------------------ running
    def _set_inputs(self, inputs: Mapping[str, object]) -> None:
        reshape = False
        for name, value in inputs.items():
            if name not in self.blobs:
                raise NetDefinitionError(f"forward: no blob named '{name}' (inputs: {', '.join(self.inputs)})")
            blob = self.blobs[name]
            array = _float_array(value)
            if tuple(array.shape) != blob.shape:
                blob.reshape(array.shape)
                reshape = True
            blob.data[...] = blob.xp.asarray(array)
        if reshape:
            self.reshape()

    def reshape(self) -> None:
        """Propagate shapes through every layer (after an input blob changed shape)."""
        self._reshape_layers()
        if self.memory_plan is not None:  # new sizes: plan again
            self.apply_memory_plan(self._keep_blobs)

    def _reshape_layers(self) -> None:
        with self.device.activate():
            for i, layer in enumerate(self.layers):
                layer.reshape(self.bottom_ids[i], self.top_ids[i])
                self._reshaped_for[i] = tuple(b.shape for b in self.bottom_ids[i])

    # ------------------------------------------------------------------ memory plan
    def plan_memory(self, keep_blobs: Iterable[str] = ()) -> "graph.MemoryPlan":
        """The memory plan for the blobs as they are now, not applied (:func:`memory.plan_for`)."""
        return memory.plan_for(self, tuple(keep_blobs))

    def apply_memory_plan(self, keep_blobs: Iterable[str] = ()) -> "graph.MemoryPlan":
        """Plan and give the blobs their shared buffers (:func:`memory.apply`)."""
        self._keep_blobs = tuple(keep_blobs)
        self.memory_plan = memory.apply(self, self._keep_blobs)
        self._reshape_layers()  # layers that keep views of their blobs take the new ones
        return self.memory_plan

    def forward_prefilled(self, start: int = 0, end: int | None = None) -> float:
        """Run layers ``start..end`` on the blobs as they are; returns the weighted loss."""
        end = len(self.layers) - 1 if end is None else end
        with self.device.activate():
            for i in range(start, end + 1):
                layer, bottoms, tops = self.layers[i], self.bottom_ids[i], self.top_ids[i]
                shapes = tuple(b.shape for b in bottoms)
                if shapes != self._reshaped_for[i]:  # as Caffe, reshape when inputs change
                    layer.reshape(bottoms, tops)
                    self._reshaped_for[i] = shapes
                layer.forward(bottoms, tops)
            loss = 0.0
            for blob, weight in self._loss_tops:
                loss += weight * float(blob.data.sum())
            if loss != loss or loss in (float("inf"), float("-inf")):  # a bad input, or the numbers
                for i in range(start, end + 1):
                    self.layers[i].check_inputs(self.bottom_ids[i])
        return loss

    def forward(self, blobs: Iterable[str] = (), start: str | None = None, end: str | None = None,
                **inputs) -> "OrderedDict[str, np.ndarray]":
        """Set input blobs from keyword arguments, run forward, return the outputs.

        Like pycaffe: ``net.forward(data=images)["prob"]``. ``blobs`` names extra blobs
        to return; ``start``/``end`` are layer names bounding the pass. Arrays returned
        are the blobs' own storage (numpy or cupy): copy them to keep them.
        """
        if self.memory_plan is not None:
            memory.check_request(self, blobs, start)
        self._set_inputs(inputs)
        start_index = self._layer_index(start, "start", "forward") if start else 0
        end_index = self._layer_index(end, "end", "forward") if end else len(self.layers) - 1
        self.loss = self.forward_prefilled(start_index, end_index)
        names = list(self.outputs if end is None else self.top_names[end]) + [b for b in blobs]
        unknown = [name for name in names if name not in self.blobs]
        if unknown:
            raise NetDefinitionError(f"forward: no blob named '{unknown[0]}' in net '{self.name}'")
        return OrderedDict((name, self.blobs[name].data) for name in names)

    def backward(self, diffs: Iterable[str] = (), start: str | None = None, end: str | None = None,
                 **top_diffs) -> "OrderedDict[str, np.ndarray]":
        """Run backward from the losses (or from ``top_diffs`` given for output blobs).

        Returns the diffs of the input blobs (and of ``diffs``), as pycaffe does.
        """
        for name, value in top_diffs.items():
            if name not in self.outputs:
                raise NetDefinitionError(f"backward: '{name}' is not an output blob ({', '.join(self.outputs)})")
            blob = self.blobs[name]
            blob.diff[...] = blob.xp.asarray(_float_array(value))
        start_index = self._layer_index(start, "start", "backward") if start else len(self.layers) - 1
        end_index = self._layer_index(end, "end", "backward") if end else 0
        self.backward_from_to(start_index, end_index, set_loss_diffs=not top_diffs)
        return OrderedDict((name, self.blobs[name].diff) for name in list(self.inputs) + list(diffs))

    def _layer_index(self, name: str, argument: str, method: str) -> int:
        """The index of layer ``name``, or a NetDefinitionError suggesting close names."""
        if name in self.layer_dict:
            return self.layer_names.index(name)
        import difflib  # noqa: PLC0415 - only on this error path

        close = difflib.get_close_matches(str(name), self.layer_names, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
            f"layers: {', '.join(self.layer_names[:10])}{', ...' if len(self.layer_names) > 10 else ''}"
        raise NetDefinitionError(f"{method}: {argument}={name!r} is not a layer of net '{self.name}'; {hint}")

    def backward_from_to(self, start: int, end: int = 0, set_loss_diffs: bool = True) -> None:
        with self.device.activate():
            if set_loss_diffs:
                for blob, weight in self._loss_tops:
                    blob.diff.fill(weight)
            for i in range(start, end - 1, -1):
                if self.layer_need_backward[i]:
                    self.layers[i].backward(self.top_ids[i], self.bottom_need_backward[i], self.bottom_ids[i])
                for callback in self._after_backward:
                    callback(i)

    def add_after_backward(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(i)`` after layer ``i``'s backward, for every layer a backward pass visits.

        Caffe's ``Net::add_after_backward``. Layers are visited from the last to the first,
        skipped ones included, so once ``callback(i)`` runs the parameter gradients of the
        layers ``i`` and above are final for this pass (data-parallel training starts
        their allreduce there while backward goes on below).
        """
        self._after_backward.append(callback)

    def param_layers(self) -> list[int]:
        """For each of ``learnable_params``, the index of the layer that owns it.

        The owner is the first layer using the blob (sharing layers come later), so the
        gradient is complete once backward has passed it.
        """
        return list(self._param_layer)

    def forward_backward(self) -> float:
        """One forward and backward pass (what the solver runs); returns the loss."""
        loss = self.forward_prefilled()
        self.loss = loss
        self.backward_from_to(len(self.layers) - 1)
        return loss

    def clear_param_diffs(self) -> None:
        """Zero every learnable blob's diff (the solver calls this each iteration)."""
        for blob in self.learnable_params:
            blob.diff.fill(0)

    # ------------------------------------------------------------------ weights
    def share_trained_layers_with(self, other: "Net") -> None:
        """Use ``other``'s parameter storage for same-named layers (test nets share the train net's)."""
        for layer in self.layers:
            source = other.layer_dict.get(layer.name)
            if source is None or not layer.blobs:
                continue
            if len(source.blobs) != len(layer.blobs):
                raise WeightsError(f"layer '{layer.name}': {len(layer.blobs)} blobs here, "
                                   f"{len(source.blobs)} in the net it shares with")
            for mine, theirs in zip(layer.blobs, source.blobs):
                if mine.shape != theirs.shape:
                    raise WeightsError(f"layer '{layer.name}': blob shape {mine.shape} here, {theirs.shape} "
                                       "in the net it shares with")
                mine.share_data(theirs)

    def copy_from(self, path: str | Path) -> int:
        """Load weights from a ``.caffemodel`` (or V1 binary) or a Caffe HDF5 ``.h5`` file.

        Layers are matched by name, as Caffe's ``CopyTrainedLayersFrom``: a layer of the
        file this net lacks is skipped (``Ignoring source layer <name>``), a layer of the
        net with parameters that the file lacks keeps its filler values (one log line per
        layer: fine-tuning after renaming ``fc8`` relies on that). A file with no weights
        at all (empty, a net definition) or with none for any layer of this net is an
        error, since it would load nothing. Returns the number of layers loaded.
        """
        path = str(path)
        return self.load_layers(path, weights.layers_of_file(path))

    def load_layers(self, path: str, source: list[tuple[str, list[np.ndarray]]]) -> int:
        """Copy (layer name, arrays) pairs read from ``path`` into the same-named layers (see :meth:`copy_from`)."""
        loaded: list[str] = []
        for name, arrays in source:
            target = self.layer_dict.get(name)
            if target is None:
                log.info("Ignoring source layer %s", name)
                continue
            if not arrays:
                continue
            weights.assign_layer_blobs(path, target, arrays)
            loaded.append(name)
        with_params = [layer.name for layer in self.layers if layer.blobs]
        if not loaded and with_params:
            in_file = [name for name, arrays in source if arrays]
            raise WeightsError(f"none of its {len(in_file)} layers with weights ({weights.some(in_file)}) is a layer "
                               f"of net '{self.name}' (layers with parameters: {weights.some(with_params)}); "
                               "weights are matched by layer name", path=path)
        for name in with_params:
            if name not in loaded:
                log.info("Layer %s: not initialised from %s (no layer of that name there): keeps its "
                         "filler values", name, path)
        log.debug("Loaded weights for %d of %d layers with parameters from %s", len(loaded), len(with_params), path)
        return len(loaded)

    def to_proto(self, write_diff: bool = False) -> "caffe_pb2.NetParameter":
        """A NetParameter with every layer's definition and learnable blobs (Caffe's ToProto)."""
        param = caffe_pb2.NetParameter()
        param.name = self.name
        for layer in self.layers:
            if layer.name in self._inserted_splits:
                continue  # splits the graph inserted are not part of the model
            layer_param = param.layer.add()
            layer_param.CopyFrom(layer.param)
            layer_param.ClearField("blobs")
            for blob in layer.blobs:
                diff = to_numpy(blob.diff) if write_diff else None
                layer_param.blobs.add().CopyFrom(io.array_to_blob_proto(to_numpy(blob.data), diff))
        return param

    def save(self, path: str | Path) -> None:
        """Write the weights as a binary ``.caffemodel`` (atomically), or HDF5 for ``.h5``."""
        path = str(path)
        if path.endswith((".h5", ".hdf5")):
            self.save_hdf5(path)
            return
        io.atomic_write_bytes(path, self.to_proto().SerializeToString())

    def export_onnx(self, path: str | Path, static_batch: bool = False, outputs=None):
        """Write the net with its current weights as ONNX (needs ``dlsoft[onnx]``); see dlsoft.onnx."""
        from ..onnx import export_net  # noqa: PLC0415 - optional, heavy
        return export_net(self, path, static_batch=static_batch, outputs=outputs)

    def save_hdf5(self, path: str | Path) -> None:
        """Write the weights in Caffe's HDF5 layout (:meth:`to_hdf5_bytes`), atomically."""
        io.atomic_write_bytes(str(path), self.to_hdf5_bytes())

    def to_hdf5_bytes(self, write_diff: bool = False) -> bytes:
        """The weights as Caffe's ``Net::ToHDF5`` writes them: a group ``data/<layer>`` for
        every layer with datasets ``0, 1, ...`` (and ``diff/<layer>`` with ``write_diff``)."""
        def fill(f) -> None:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for layer in self.layers:
                group = data.create_group(layer.name)
                diff_group = diff.create_group(layer.name) if diff is not None else None
                for i, blob in enumerate(layer.blobs):
                    group.create_dataset(str(i), data=to_numpy(blob.data))
                    if diff_group is not None:
                        diff_group.create_dataset(str(i), data=to_numpy(blob.diff))
        return io.hdf5_bytes(fill)

    # ------------------------------------------------------------------ inspection
    def param_count(self) -> int:
        """Total elements of every parameter blob, as pycaffe's ``net.params`` holds them."""
        return sum(blob.count for blobs in self.params.values() for blob in blobs)

    def summary(self) -> str:
        """A table of layers: name, type, top shapes and parameter count."""
        rows = [("layer", "type", "top shape(s)", "params")]
        for i, layer in enumerate(self.layers):
            shapes = ", ".join("x".join(map(str, blob.shape)) or "scalar" for blob in self.top_ids[i])
            count = sum(blob.count for blob in layer.blobs)
            rows.append((layer.name, layer.type, shapes, f"{count:,}" if count else "-"))
        widths = [max(len(row[c]) for row in rows) for c in range(4)]
        line = lambda row: "  ".join(cell.ljust(w) if c < 3 else cell.rjust(w)  # noqa: E731
                                      for c, (cell, w) in enumerate(zip(row, widths)))
        rule = "-" * (sum(widths) + 6)
        total = self.param_count()
        out = [f"Net '{self.name}' ({self.phase}, {self.device})", rule, line(rows[0]), rule]
        out += [line(row) for row in rows[1:]]
        out += [rule, f"{len(self.layers)} layers, {total:,} parameters "
                      f"({total * 4 / 2**20:.2f} MiB as float32)"]
        line = memory.summary_line(self)  # a forward-only net: what the memory plan saves
        return "\n".join(out + ([line] if line else []))

    def close(self) -> None:
        """Stop prefetch threads and release resources held by layers."""
        for layer in self.layers:
            layer.close()

    def __enter__(self) -> "Net":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Net {self.name!r} {self.phase} {len(self.layers)} layers on {self.device}>"


def _float_array(value):
    """``value`` as a float32 numpy array, or unchanged if it already lives on a GPU."""
    return value if hasattr(value, "__cuda_array_interface__") else np.asarray(value, dtype=np.float32)
