"""Retrain a built-in zoo entry from its own solver and update its zoo.yaml record.

    python scripts/train_zoo_entry.py lenet_mnist [--iterations N] [--seed S] [--dir DIR]

The entry folder (dlsoft/model_zoo/entries/NAME) is copied to a temporary run
directory, trained there with ``dlsoft.get_solver("solver.prototxt").solve()`` (the
solver's paths are relative to that directory), and the resulting weights are
evaluated with the deploy net on the bundled test split (``load_digits("test")``,
pixels scaled by the entry's recorded preprocessing). The weights go to
``NAME.caffemodel`` in the entry folder and zoo.yaml gets the metric, the checksums,
the dlsoft version and this command.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import dlsoft
from dlsoft.backend import to_numpy
from dlsoft.fileio import atomic_write_text
from dlsoft.model_zoo import BUILTIN_DIR, get_entry
from dlsoft.model_zoo.entry import ZOO_FILE, dump_yaml, load_yaml
from dlsoft.model_zoo.publish import record_checksums

EVAL_DATA = "bundled digits test split ({n:,} images)"


def evaluate(deploy: Path, weights: Path, scale: float, batch_size: int = 100) -> tuple[float, int]:
    """Top-1 accuracy of the deploy net's ``prob`` on the bundled test split."""
    from dlsoft.data.digits import load_digits

    images, labels = load_digits("test")
    net = dlsoft.Net(str(deploy), phase="TEST", weights=str(weights))
    correct = 0
    for start in range(0, len(labels), batch_size):
        batch = images[start:start + batch_size].astype(np.float32) * np.float32(scale)
        prob = to_numpy(net.forward(data=batch)["prob"])
        correct += int((prob.argmax(axis=1) == labels[start:start + batch_size]).sum())
    net.close()
    return correct / len(labels), len(labels)


def train(name: str, iterations: int | None = None, seed: int | None = None, folder: Path | None = None) -> dict:
    """Train the entry in ``folder`` (default: the built-in entry NAME); returns its new zoo.yaml."""
    folder = Path(folder) if folder is not None else BUILTIN_DIR / name
    entry = get_entry(str(folder.resolve()))
    scale = float(entry.meta.get("input", {}).get("preprocessing", {}).get("scale", 1.0))
    weights_name = f"{name}.caffemodel"
    with tempfile.TemporaryDirectory(prefix=f"train_{name}_") as run_dir:
        for path in folder.iterdir():
            if path.suffix == ".prototxt":
                shutil.copyfile(path, Path(run_dir) / path.name)
        cwd = os.getcwd()
        os.chdir(run_dir)
        try:
            if seed is not None:
                dlsoft.set_random_seed(seed)
            solver = dlsoft.get_solver("solver.prototxt")
            if iterations is not None:
                solver.param.max_iter = iterations
            started = time.time()
            solver.solve()
            seconds = time.time() - started
            solver.net.save(weights_name)
            # The deploy net is what the entry serves: keep only its layers' weights.
            deploy = dlsoft.Net("deploy.prototxt", phase="TEST", weights=weights_name)
            deploy.save(weights_name)
            deploy.close()
            max_iter = solver.param.max_iter
        finally:
            os.chdir(cwd)
        shutil.copyfile(Path(run_dir) / weights_name, folder / weights_name)

    accuracy, n = evaluate(folder / "deploy.prototxt", folder / weights_name, scale)
    meta = load_yaml(folder / ZOO_FILE)
    meta.setdefault("files", {})["weights"] = {"path": weights_name}
    meta.pop("weights", None)
    meta["metrics"] = [{"name": "accuracy", "value": round(accuracy, 4), "data": EVAL_DATA.format(n=n)}]
    meta["produced_by"] = {
        "dlsoft_version": dlsoft.__version__,
        "command": f"python scripts/train_zoo_entry.py {name}" + (f" --iterations {iterations}" if iterations else "")
                   + (f" --seed {seed}" if seed is not None else ""),
        "training_data": "bundled digits training split only (builtin:digits/train)",
        "iterations": int(max_iter),
        "train_seconds": round(seconds, 1),
    }
    atomic_write_text(folder / ZOO_FILE, dump_yaml(meta))
    record_checksums(folder)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="built-in entry, e.g. lenet_mnist or mlp_digits")
    parser.add_argument("--iterations", type=int, default=None, help="override the solver's max_iter")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the solver's random_seed)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="train the entry folder DIR (a copy from `dlsoft zoo get`) instead of the built-in")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dir is None and not (BUILTIN_DIR / args.name).is_dir():
        parser.error(f"{args.name} is not a built-in entry (use --dir for another folder)")
    meta = train(args.name, args.iterations, args.seed, args.dir)
    print(dump_yaml({"metrics": meta["metrics"], "produced_by": meta["produced_by"]}), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
