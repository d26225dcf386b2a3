"""The benchmark suite: dlsoft against PyTorch CPU and OpenCV dnn on Caffe's own nets.

Usage::

    python benchmarks/run.py              # every row, 7 rounds, 1 and 2 threads, writes BENCHMARKS.md
    python benchmarks/run.py --quick      # 3 rounds, fewer rows, no memory processes (a short check)
    python benchmarks/run.py --rows lenet_train,googlenet_fwd --threads 1 --output -

Every row builds the same net three ways from one prototxt and one set of weights: a
dlsoft Net (or Solver, for a training iteration), the equivalent PyTorch model (built
here layer by layer from the same NetParameter, weights copied over) and OpenCV's Caffe
importer (reading a prototxt and caffemodel that dlsoft wrote). Before timing, the
outputs of the three are compared, so the rows time equivalent work.

Timing: in one process, after warm-up, rounds alternate between the sides (the side that
goes first alternates too), with the BLAS threads of numpy (threadpoolctl), torch and
OpenCV all set to the same count. Each cell is the median over the rounds with the
minimum and maximum beside it; a cell whose max/min exceeds 1.3 is marked noisy.

Memory: for each row and side, a separate process (this script with ``--child``) builds
that side alone, runs a few iterations and reports its peak resident set
(``resource.getrusage``), and its resident set after the imports, the same way for
every side.

On machines where ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` are set (to keep old
OpenBLAS builds correct), they slow a current numpy's OpenBLAS: the script re-runs itself
without both (``--keep-blas-env`` keeps them) and reports the BLAS kernel it then uses.
Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import dlsoft  # noqa: E402  (before numpy: it sets OpenBLAS's idle-thread timeout, see dlsoft.threads)
import numpy as np  # noqa: E402
from dlsoft.netdef import graph, io  # noqa: E402
from dlsoft.protos import caffe_pb2  # noqa: E402

ZOO = ROOT / "dlsoft" / "model_zoo" / "entries"
RESNET50 = ROOT.parent / "shared" / "caffe-wild" / "soeaver+caffe-model" / "cls" / "resnet" / "deploy_resnet50.prototxt"
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input"}

# key: (title, kind, net file, batch, input shape without batch, peers)
ROWS = {
    "lenet_train": ("LeNet training iteration, batch 64", "train", ZOO / "lenet_mnist/train_val.prototxt",
                    64, (1, 28, 28), ("torch",)),
    "cifar10_quick_train": ("cifar10_quick training iteration, batch 100", "train",
                            ZOO / "cifar10_quick/train_val.prototxt", 100, (3, 32, 32), ("torch",)),
    "caffenet_train": ("CaffeNet training iteration, batch 32", "train",
                       ZOO / "bvlc_reference_caffenet/train_val.prototxt", 32, (3, 227, 227), ("torch",)),
    "caffenet_fwd": ("CaffeNet deploy forward, batch 10", "forward", ZOO / "bvlc_reference_caffenet/deploy.prototxt",
                     10, (3, 227, 227), ("torch", "opencv")),
    "googlenet_fwd": ("GoogLeNet deploy forward, batch 1", "forward", ZOO / "bvlc_googlenet/deploy.prototxt",
                      1, (3, 224, 224), ("torch", "opencv")),
    "resnet50_fwd": ("ResNet-50 (caffe-wild, soeaver) deploy forward, batch 1", "forward", RESNET50,
                     1, (3, 224, 224), ("torch", "opencv")),
}
QUICK_ROWS = ("lenet_train", "cifar10_quick_train", "googlenet_fwd")
PEER_NAMES = {"torch": "PyTorch", "opencv": "OpenCV dnn"}
NOISY = 1.3


# --------------------------------------------------------------------------- the nets
def training_net(path: Path, batch: int, shape: tuple) -> "caffe_pb2.NetParameter":
    """The TRAIN net of a train_val file with its data layers replaced by an Input layer."""
    param = io.read_net(path)
    param = graph.filter_net(param, graph.make_state(param, "TRAIN"))
    out = caffe_pb2.NetParameter(name=param.name)
    for layer in param.layer:
        if layer.type in DATA_TYPES:
            new = out.layer.add(name=layer.name, type="Input")
            new.top.extend(layer.top)
            new.input_param.shape.add().dim.extend((batch, *shape))
            new.input_param.shape.add().dim.extend((batch,))
        elif layer.type != "Accuracy":
            out.layer.add().CopyFrom(layer)
    return out


def deploy_net(path: Path, batch: int) -> "caffe_pb2.NetParameter":
    """A deploy file with its input's batch set to ``batch`` (as an Input layer)."""
    param = io.read_net(path)
    net = dlsoft.Net(param, phase="TEST")  # upgrades legacy input fields into shapes
    name = net.inputs[0]
    shape = (batch,) + net.blobs[name].shape[1:]
    out = caffe_pb2.NetParameter(name=param.name)
    new = out.layer.add(name=name, type="Input")
    new.top.append(name)
    new.input_param.shape.add().dim.extend(shape)
    for layer in param.layer:
        if layer.type != "Input":
            out.layer.add().CopyFrom(layer)
    return out


def randomise(net) -> None:
    """Random weights that keep activations in range; BatchNorm gets random statistics."""
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            layer.blobs[0].data[...] = rng.normal(0, 0.1, c)
            layer.blobs[1].data[...] = rng.uniform(0.5, 1.5, c)
            layer.blobs[2].data[...] = 1
        elif layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            if len(layer.blobs) > 1:
                layer.blobs[1].data[...] = rng.normal(0, 0.1, layer.blobs[1].shape)
        elif layer.blobs:
            w = layer.blobs[0]
            fan_in = w.count // w.shape[0]
            w.data[...] = rng.normal(0, np.sqrt(2.0 / fan_in), w.shape)
            for b in layer.blobs[1:]:
                b.data[...] = rng.normal(0, 0.01, b.shape)


def net_weights(net) -> dict[str, list[np.ndarray]]:
    return {name: [np.array(b.data) for b in blobs] for name, blobs in net.params.items()}


# --------------------------------------------------------------------------- PyTorch
def torch_model(net_param, train: bool):
    """The PyTorch module computing what the NetParameter's layers compute.

    Modules whose input size Caffe infers (Convolution, InnerProduct) are lazy:
    :func:`materialise` runs one forward to size them before weights are copied in.
    """
    import torch
    import torch.nn.functional as F

    class CaffeGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []
            self.layers = torch.nn.ModuleDict()
            self.buffers_of = {}
            for lp in net_param.layer:
                self.steps.append((lp.name, lp.type, list(lp.bottom), list(lp.top), self._make(lp)))

        def _make(self, lp):
            t = lp.type
            if t == "Convolution":
                p = lp.convolution_param
                k = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size[0],) * 2
                s = (p.stride_h, p.stride_w) if p.stride_h else ((p.stride[0],) * 2 if p.stride else (1, 1))
                pad = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else ((p.pad[0],) * 2 if p.pad else (0, 0))
                d = (p.dilation[0],) * 2 if p.dilation else (1, 1)
                self.layers[lp.name] = torch.nn.LazyConv2d(p.num_output, k, s, pad, d, p.group, p.bias_term)
                return lambda x, m=self.layers[lp.name]: m(x)
            if t == "InnerProduct":
                p = lp.inner_product_param
                self.layers[lp.name] = torch.nn.LazyLinear(p.num_output, p.bias_term)
                return lambda x, m=self.layers[lp.name]: m(x.flatten(1))
            if t == "Pooling":
                p = lp.pooling_param
                if p.global_pooling:
                    return (lambda x: F.adaptive_max_pool2d(x, 1)) if p.pool == p.MAX else \
                        (lambda x: F.adaptive_avg_pool2d(x, 1))
                k, s, pad = p.kernel_size, p.stride or 1, p.pad
                if p.pool == p.MAX:
                    return lambda x: F.max_pool2d(x, k, s, pad, ceil_mode=True)
                return lambda x: F.avg_pool2d(x, k, s, pad, ceil_mode=True, count_include_pad=True)
            if t == "ReLU":
                inplace = not train and lp.top[0] == lp.bottom[0]
                return lambda x: F.relu(x, inplace=inplace)
            if t == "LRN":
                p = lp.lrn_param
                return lambda x: F.local_response_norm(x, p.local_size, p.alpha, p.beta, p.k)
            if t == "Dropout":
                ratio = lp.dropout_param.dropout_ratio
                return lambda x: F.dropout(x, ratio, training=train)
            if t == "Concat":
                axis = lp.concat_param.axis
                return lambda *xs: torch.cat(xs, axis)
            if t == "Softmax":
                return lambda x: F.softmax(x, 1)
            if t == "SoftmaxWithLoss":
                return lambda x, y: F.cross_entropy(x, y.long())
            if t == "BatchNorm":
                eps = lp.batch_norm_param.eps
                self.register_buffer(_key(lp.name, "mean"), None)
                self.register_buffer(_key(lp.name, "var"), None)
                return lambda x, n=lp.name: F.batch_norm(x, getattr(self, _key(n, "mean")),
                                                         getattr(self, _key(n, "var")), training=False, eps=eps)
            if t == "Scale":
                self.register_parameter(_key(lp.name, "w"), None)
                self.register_parameter(_key(lp.name, "b"), None)

                def scale(x, n=lp.name):
                    w, b = getattr(self, _key(n, "w")), getattr(self, _key(n, "b"))
                    shape = (1, -1) + (1,) * (x.dim() - 2)
                    return x * w.view(shape) + (0 if b is None else b.view(shape))
                return scale
            if t == "Eltwise":
                op = lp.eltwise_param.operation
                if op == caffe_pb2.EltwiseParameter.SUM:
                    return lambda *xs: sum(xs[1:], xs[0])
                if op == caffe_pb2.EltwiseParameter.PROD:
                    return lambda *xs: torch.stack(xs).prod(0)
                return lambda *xs: torch.stack(xs).amax(0)
            if t in ("Split",):
                return lambda x, n=len(lp.top): (x,) * n
            if t in ("Input",):
                return None
            raise NotImplementedError(f"benchmark: no PyTorch equivalent for layer type {t}")

        def forward(self, **inputs):
            values = dict(inputs)
            for _, t, bottoms, tops, fn in self.steps:
                if fn is None:
                    continue
                out = fn(*(values[b] for b in bottoms))
                if len(tops) == 1:
                    values[tops[0]] = out
                else:
                    values.update(zip(tops, out))
            return values

        def load(self, weights: dict) -> None:
            """Copy Caffe-layout weights (layer name -> blobs) into the modules."""
            with torch.no_grad():
                for name, t, *_ in self.steps:
                    if name not in weights:
                        continue
                    blobs = [torch.from_numpy(np.ascontiguousarray(b)) for b in weights[name]]
                    if t in ("Convolution", "InnerProduct"):
                        m = self.layers[name]
                        m.weight.copy_(blobs[0].reshape(m.weight.shape))
                        if len(blobs) > 1:
                            m.bias.copy_(blobs[1])
                    elif t == "BatchNorm":
                        s = float(blobs[2].reshape(-1)[0]) or 1.0
                        setattr(self, _key(name, "mean"), blobs[0] / s)
                        setattr(self, _key(name, "var"), blobs[1] / s)
                    elif t == "Scale":
                        for what, blob in zip(("w", "b"), blobs):
                            current = getattr(self, _key(name, what))
                            if current is None:
                                setattr(self, _key(name, what), torch.nn.Parameter(blob.clone()))
                            else:
                                current.copy_(blob)

    return CaffeGraph()


def _key(layer: str, what: str) -> str:
    return "p_" + "".join(c if c.isalnum() else "_" for c in layer) + "_" + what


def materialise(model, inputs: dict, weights: dict | None) -> None:
    """Size the lazy modules with one forward, then copy ``weights`` in (if given)."""
    import torch
    if weights is None:  # a training net with torch's own initialisation: still needs Scale/BN sized
        weights = {}
    model.load({n: w for n, w in weights.items()
                if any(s[0] == n and s[1] in ("BatchNorm", "Scale") for s in model.steps)})
    with torch.no_grad():
        model(**inputs)
    model.load(weights)


# --------------------------------------------------------------------------- the sides
class Side:
    """One implementation of one row: ``run()`` does one timed unit of work."""

    name = ""

    def run(self) -> None:
        raise NotImplementedError

    def output(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DlsoftTrain(Side):
    name = "dlsoft"

    def __init__(self, net_param, x, y):
        from dlsoft.solver import Solver
        sp = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=5e-4, lr_policy="fixed",
                                       max_iter=10**9, display=0, snapshot_after_train=False)
        sp.net_param.CopyFrom(net_param)
        self.solver = Solver(sp, metrics=False, progress_bar=False)
        net = self.solver.net
        net.blobs[net.inputs[0]].data[...] = x
        net.blobs[net.inputs[1]].data[...] = y

    def run(self):
        self.solver.step(1)

    def loss(self) -> float:
        return float(self.solver.net.forward_prefilled())

    def close(self):
        self.solver.close()


class TorchTrain(Side):
    name = "torch"

    def __init__(self, net_param, x, y, weights=None):
        import torch
        self.torch = torch
        self.model = torch_model(net_param, train=True)
        names = [lp.top for lp in net_param.layer if lp.type == "Input"][0]
        self.inputs = {names[0]: torch.from_numpy(x), names[1]: torch.from_numpy(y)}
        materialise(self.model, self.inputs, weights)
        self.loss_name = [lp.top[0] for lp in net_param.layer if lp.type == "SoftmaxWithLoss"][0]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)

    def run(self):
        self.optimizer.zero_grad()
        self.model(**self.inputs)[self.loss_name].backward()
        self.optimizer.step()

    def loss(self) -> float:
        with self.torch.no_grad():
            return float(self.model(**self.inputs)[self.loss_name])


class DlsoftForward(Side):
    name = "dlsoft"

    def __init__(self, net_param, x, weights):
        self.net = dlsoft.Net(net_param, phase="TEST")
        for name, arrays in weights.items():
            for blob, array in zip(self.net.params[name], arrays):
                blob.data[...] = array
        self.input = self.net.inputs[0]
        self.net.blobs[self.input].data[...] = x
        self.out = self.net.outputs[0]
        self.checked = compared_blob(net_param)[0]

    def run(self):
        self.net.forward_prefilled()

    def output(self):
        self.run()
        return np.array(self.net.blobs[self.checked].data)


class TorchForward(Side):
    name = "torch"

    def __init__(self, net_param, x, weights):
        import torch
        self.torch = torch
        self.model = torch_model(net_param, train=False).eval()
        name = [lp.top[0] for lp in net_param.layer if lp.type == "Input"][0]
        self.inputs = {name: torch.from_numpy(x)}
        materialise(self.model, self.inputs, weights)
        self.checked = compared_blob(net_param)[0]

    def run(self):
        with self.torch.inference_mode():
            self.result = self.model(**self.inputs)

    def output(self):
        self.run()
        return self.result[self.checked].numpy()


class OpenCVForward(Side):
    name = "opencv"

    def __init__(self, prototxt: Path, caffemodel: Path, x):
        import cv2
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.x = x
        self.checked_layer = compared_blob(io.read_net(prototxt))[1]

    def run(self):
        self.net.setInput(self.x)
        self.result = self.net.forward()

    def output(self):
        self.net.setInput(self.x)
        return self.net.forward(self.checked_layer)


def compared_blob(net_param) -> tuple[str, str]:
    """The blob the equivalence check compares, and its producing layer: the logits when
    the net ends in Softmax (probabilities of a random net saturate), else the last top."""
    last = net_param.layer[-1]
    name = last.bottom[0] if last.type == "Softmax" else last.top[0]
    producer = [lp.name for lp in net_param.layer if name in lp.top and name not in lp.bottom]
    return name, producer[-1]


# --------------------------------------------------------------------------- a row's files
def prepare(key: str, workdir: Path) -> dict:
    """Write the row's net, weights (npz and caffemodel) and inputs into ``workdir``."""
    title, kind, path, batch, shape, peers = ROWS[key]
    rng = np.random.default_rng(1)
    if kind == "train":
        param = training_net(path, batch, shape)
        x = rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.float32)
        np.savez(workdir / "inputs.npz", x=x, y=y)
        io.write_net(param, workdir / "net.prototxt")
        return {"net": workdir / "net.prototxt"}
    param = deploy_net(path, batch)
    net = dlsoft.Net(param, phase="TEST")
    randomise(net)
    io.write_net(param, workdir / "net.prototxt")
    net.save(workdir / "weights.caffemodel")
    weights = net_weights(net)
    with open(workdir / "weights.pkl", "wb") as f:
        pickle.dump(weights, f, protocol=pickle.HIGHEST_PROTOCOL)
    np.savez(workdir / "inputs.npz", x=rng.uniform(-1, 1, (batch, *shape)).astype(np.float32))
    return {"net": workdir / "net.prototxt"}


def load_weights(workdir: Path) -> dict:
    with open(workdir / "weights.pkl", "rb") as f:
        return pickle.load(f)


def build_side(key: str, side: str, workdir: Path) -> Side:
    kind = ROWS[key][1]
    param = io.read_net(workdir / "net.prototxt")
    inputs = np.load(workdir / "inputs.npz")
    if kind == "train":
        x, y = inputs["x"], inputs["y"]
        return DlsoftTrain(param, x, y) if side == "dlsoft" else TorchTrain(param, x, y)
    x = inputs["x"]
    if side == "opencv":
        return OpenCVForward(workdir / "net.prototxt", workdir / "weights.caffemodel", x)
    weights = load_weights(workdir)
    return DlsoftForward(param, x, weights) if side == "dlsoft" else TorchForward(param, x, weights)


# --------------------------------------------------------------------------- threads
def set_threads(n: int):
    """Give numpy's BLAS, dlsoft's kernels, torch and OpenCV ``n`` threads; returns the
    threadpoolctl limiter (None without threadpoolctl: then BLAS keeps its own count)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("warning: threadpoolctl is not installed (pip install threadpoolctl): numpy's BLAS threads "
              "are not set", file=sys.stderr)
        limiter = None
    else:
        limiter = threadpool_limits(limits=n)
    setter = getattr(dlsoft, "set_num_threads", None)
    if setter is not None:
        setter(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import cv2
        cv2.setNumThreads(n)
    except ImportError:
        pass
    return limiter


# --------------------------------------------------------------------------- measuring
def time_once(side: Side) -> tuple[float, float]:
    """Wall and process-CPU milliseconds of one run."""
    start, cpu = time.perf_counter(), time.process_time()
    side.run()
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3


def alternate(sides: list[Side], rounds: int, warmup: int) -> tuple[list[list[float]], list[list[float]]]:
    """Per side, the wall and CPU milliseconds of each round; the first side alternates every round."""
    for side in sides:
        for _ in range(warmup):
            side.run()
    times = [[] for _ in sides]
    cpu = [[] for _ in sides]
    for r in range(rounds):
        order = list(range(len(sides)))
        if r % 2:
            order.reverse()
        for i in order:
            wall, used = time_once(sides[i])
            times[i].append(wall)
            cpu[i].append(used)
    return times, cpu


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def check_equivalent(key: str, sides: dict[str, Side]) -> str:
    """Compare the sides' outputs (forward) or losses (training) before timing."""
    kind = ROWS[key][1]
    if kind == "train":
        losses = {name: side.loss() for name, side in sides.items()}
        return "losses " + ", ".join(f"{n} {v:.5f}" for n, v in losses.items())
    ref = sides["dlsoft"].output()
    parts = []
    for name, side in sides.items():
        if name == "dlsoft":
            continue
        other = side.output().reshape(ref.shape)
        parts.append(f"max |dlsoft - {name}| / max |dlsoft| {np.abs(ref - other).max() / np.abs(ref).max():.1e}")
    parts.append(f"(blob {compared_blob(io.read_net(ROWS[key][2]))[0]!r})")
    return ", ".join(parts)


def child(key: str, side: str, workdir: Path, threads: int, iterations: int) -> None:
    """Build one side alone, run it, print its memory as JSON (used for the memory columns)."""
    gc.collect()
    baseline = _current_rss_mib()
    limiter = set_threads(threads)
    s = build_side(key, side, workdir)
    for _ in range(iterations):
        s.run()
    peak = _peak_rss_mib()
    print(json.dumps({"peak_mib": peak, "baseline_mib": baseline}))
    del limiter


def _peak_rss_mib() -> float:
    """The process's peak resident set: the kernel's VmHWM on Linux, else getrusage's ru_maxrss.

    (On Linux ru_maxrss survives fork+exec, so a child would report its parent's peak.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(key: str, side: str, workdir: Path, threads: int) -> dict | None:
    cmd = [sys.executable, __file__, "--child", key, side, str(workdir), "--threads", str(threads), "--keep-blas-env"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        print(f"  memory process for {key}/{side} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def machine() -> dict:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        def threadpool_info():
            return []
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, {i.get('threading_layer')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    versions = {"numpy": np.__version__, "dlsoft": dlsoft.__version__}
    for name in ("torch", "cv2", "numba"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "blas": "; ".join(blas) or "unknown", "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "blas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}}


def cell(ours: dict, theirs: dict) -> str:
    noisy = any(v["max"] / v["min"] > NOISY for v in (ours, theirs))
    ratio = ours["median"] / theirs["median"]
    ratio_text = f"**{ratio:.2f}**" if ratio > 1.0 else f"{ratio:.2f}"
    return (f"{ours['median']:.1f} [{ours['min']:.1f}-{ours['max']:.1f}] / "
            f"{theirs['median']:.1f} [{theirs['min']:.1f}-{theirs['max']:.1f}] ms = {ratio_text}"
            + (" (noisy)" if noisy else ""))


def markdown(results: list[dict], info: dict, args) -> str:
    threads = args.threads
    head = "| work | peer | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}: dlsoft / peer" for t in threads) \
        + (" | 1 thread, CPU time ratio |" if 1 in threads else " |") + " peak RSS MiB, dlsoft / peer (above imports) |"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python benchmarks/run.py{' --quick' if args.quick else ''}` on {info['date']}.",
        f"CPU: {info['cpu']}. BLAS (numpy): {info['blas']}. "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
        f"OPENBLAS_CORETYPE/L2_SIZE in the environment: {info['blas_env'] or 'none'}.",
        "",
        f"Each cell: median [min-max] of {args.rounds} alternating rounds after {args.warmup} warm-up runs, "
        "in one process, milliseconds per forward pass or per training iteration (forward, backward, SGD "
        "update with momentum and weight decay), then the ratio dlsoft / peer (below 1: dlsoft is faster; "
        f"bold: slower). A cell is marked noisy when max/min exceeds {NOISY} on either side. Random data; "
        "weights random (deploy nets, BatchNorm with random statistics) and identical on both sides, outputs "
        "compared before timing. Peak RSS: each side alone in its own process, at 1 thread, "
        "the kernel's peak resident set (VmHWM, as `resource.getrusage` would report without fork inheritance), and in brackets the part above the process's "
        "resident set after its imports. The CPU-time ratio (process CPU seconds per run, medians, at 1 "
        "thread) is the work each side does, which other programs on a shared machine disturb far less "
        "than the wall time.",
        "",
        head,
        "|" + "---|" * (3 + len(threads) + (1 in threads)),
    ]
    for r in results:
        for peer in r["peers"]:
            cells = []
            for t in threads:
                data = r["times"].get(t)
                cells.append(cell(data["dlsoft"], data[peer]) if data else "-")
            mem = r.get("memory", {})
            if mem.get("dlsoft") and mem.get(peer):
                m, p = mem["dlsoft"], mem[peer]
                mem_text = (f"{m['peak_mib']:.0f} / {p['peak_mib']:.0f} "
                            f"({m['peak_mib'] - m['baseline_mib']:.0f} / {p['peak_mib'] - p['baseline_mib']:.0f})")
            else:
                mem_text = "-"
            if 1 in threads:
                used = r["cpu"][1]
                cells.append(f"{used['dlsoft']['median'] / used[peer]['median']:.2f}")
            lines.append(f"| {r['title']} | {PEER_NAMES[peer]} | " + " | ".join(cells) + f" | {mem_text} |")
    lines += ["", "Checks before timing: " + "; ".join(f"{r['key']}: {r['check']}" for r in results), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, a few rows, no memory processes")
    parser.add_argument("--rows", help="comma-separated row keys: " + ", ".join(ROWS))
    parser.add_argument("--threads", default="1,2", help="thread counts to run (default 1,2)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7, quick 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="Markdown file to write ('-': none)")
    parser.add_argument("--keep-blas-env", action="store_true",
                        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as they are in the environment")
    parser.add_argument("--child", nargs=3, metavar=("ROW", "SIDE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in str(args.threads).split(",")]

    if args.child:
        key, side, workdir = args.child
        child(key, side, Path(workdir), args.threads[0], iterations=3)
        return
    if not args.keep_blas_env and any(k in os.environ for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                                   "--keep-blas-env"], env)

    args.rounds = args.rounds or (3 if args.quick else 7)
    keys = args.rows.split(",") if args.rows else list(QUICK_ROWS if args.quick else ROWS)
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS)}")
    info = machine()
    print(f"{info['cpu']}; BLAS {info['blas']}; {info['versions']}")
    results = []
    for key in keys:
        title, kind, path, batch, shape, peers = ROWS[key]
        if not Path(path).is_file():
            print(f"{title}: skipped ({path} not found)")
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-{key}-") as tmp:
            workdir = Path(tmp)
            prepare(key, workdir)
            sides = {"dlsoft": build_side(key, "dlsoft", workdir)}
            for peer in peers:
                sides[peer] = build_side(key, peer, workdir)
            if kind == "train":  # same starting weights, so the losses can be compared
                _copy_train_weights(sides["dlsoft"], sides["torch"])
            result = {"key": key, "title": title, "peers": peers, "times": {},
                      "check": check_equivalent(key, sides)}
            print(f"{title}: {result['check']}")
            for t in args.threads:
                limiter = set_threads(t)
                names = list(sides)
                times, cpu = alternate([sides[n] for n in names], args.rounds, args.warmup)
                result["times"][t] = {n: summary(v) for n, v in zip(names, times)}
                result.setdefault("cpu", {})[t] = {n: summary(v) for n, v in zip(names, cpu)}
                del limiter
                for peer in peers:
                    print(f"  {t} thread(s) vs {PEER_NAMES[peer]}: "
                          f"{cell(result['times'][t]['dlsoft'], result['times'][t][peer])}", flush=True)
            for side in sides.values():
                side.close()
            del sides
            gc.collect()
            if not (args.quick or args.no_memory):
                result["memory"] = {s: memory(key, s, workdir, 1) for s in ("dlsoft", *peers)}
                print("  peak RSS MiB: " + ", ".join(f"{s} {m['peak_mib']:.0f}" for s, m in result["memory"].items()
                                                     if m), flush=True)
            results.append(result)
            if args.output != "-":  # after every row, so an interrupted run keeps what it measured
                Path(args.output).write_text(markdown(results, info, args))
    text = markdown(results, info, args)
    print()
    print(text)
    if args.output != "-":
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")


def _copy_train_weights(ours: DlsoftTrain, theirs: TorchTrain) -> None:
    """Start the PyTorch model from dlsoft's initial weights (the loss check compares them)."""
    net = ours.solver.net
    theirs.model.load(net_weights(net))


if __name__ == "__main__":
    main()
