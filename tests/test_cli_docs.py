"""Every example in README.md runs, in order, in one empty directory.

Blocks marked ``<!-- slow -->`` run only with ``-m slow``; ``<!-- needs graphviz -->``
only where Graphviz's ``dot`` is installed; ``<!-- expect-error -->`` must fail with
exit status 2 and the one-line error shown.
"""
from __future__ import annotations

import gzip
import re
import shlex
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlsoft.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- (?P<mark>[^>]*?) -->\s*\n)?```console\n(?P<body>.*?)```", re.DOTALL)


def doc_blocks() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(mark, [(command line, expected output lines)]) for each console block of the doc."""
    blocks = []
    for match in BLOCK.finditer(DOC.read_text()):
        commands: list[tuple[str, list[str]]] = []
        for line in match.group("body").splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif commands and line.strip():
                commands[-1][1].append(line)
        blocks.append((match.group("mark") or "", commands))
    return blocks


def make_images(folder: Path) -> None:
    from PIL import Image

    from dlsoft.data.digits import load_digits
    images, labels = load_digits("test")[:2]
    folder.mkdir()
    lines = []
    for i in range(6):
        Image.fromarray(np.asarray(images[i]).reshape(28, 28).astype(np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png {int(labels[i])}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")


def make_mnist(folder: Path) -> None:
    folder.mkdir()
    images = (np.arange(3 * 28 * 28) % 256).astype(np.uint8)
    with gzip.open(folder / "images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 3, 28, 28) + images.tobytes())
    with gzip.open(folder / "labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 3) + bytes([1, 2, 3]))


def make_annoset(folder: Path) -> None:
    from PIL import Image
    folder.mkdir()
    (folder / "labelmap.prototxt").write_text('item { name: "none_of_the_above" label: 0 } item { name: "box" label: 1 }')
    lines = []
    for i in range(2):
        Image.new("RGB", (40, 30), (i * 100, 50, 50)).save(folder / f"{i}.jpg")
        (folder / f"{i}.xml").write_text("<annotation><object><name>box</name><bndbox><xmin>5</xmin><ymin>4</ymin>"
                                         "<xmax>20</xmax><ymax>25</ymax></bndbox></object></annotation>")
        lines.append(f"{i}.jpg {i}.xml")
    (folder / "trainval.txt").write_text("\n".join(lines) + "\n")


def name_entry(work: Path) -> None:
    (work / "shared" / "my_mlp" / "zoo.yaml").write_text(
        "name: my_mlp\ndescription: the bundled MLP, retrained\nlicence: BSD-2-Clause\n"
        "metrics: [{name: accuracy, value: 0.9, data: bundled digits test split}]\n")


# Files a command needs that the doc says the reader brings along.
SETUP = {
    "dlsoft convert-imageset": lambda work: make_images(work / "images"),
    "dlsoft convert-mnist": lambda work: make_mnist(work / "mnist"),
    "dlsoft convert-annoset": lambda work: make_annoset(work / "voc"),
    "dlsoft zoo publish": name_entry,
}


def run_blocks(work: Path, include_slow: bool) -> int:
    ran = 0
    for mark, commands in doc_blocks():
        if mark == "slow" and not include_slow:
            continue
        if mark == "needs graphviz" and shutil.which("dot") is None:
            continue
        for line, expected in commands:
            for prefix, setup in SETUP.items():
                if line.startswith(prefix):
                    setup(work)
            args = shlex.split(line)
            assert args[0] == "dlsoft"
            result = CliRunner().invoke(cli, args[1:])
            if mark == "expect-error":
                assert result.exit_code == 2, (line, result.output)
                assert result.stderr.strip().splitlines() == expected, (line, result.stderr)
            else:
                assert result.exit_code == 0, (line, result.output)
            ran += 1
    return ran


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLSOFT_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("DLSOFT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_doc_examples_run(work):
    assert run_blocks(work, include_slow=False) >= 30


@pytest.mark.slow
def test_doc_examples_run_including_the_long_trainings(work):
    shutil.copytree(ROOT / "examples", work / "examples")
    run_blocks(work, include_slow=True)


def test_every_command_is_documented_with_an_example():
    from test_cli import all_commands
    documented = []
    for _, commands in doc_blocks():
        for line, _ in commands:
            tokens = shlex.split(line)[1:]
            while tokens and tokens[0].startswith("-"):  # global options before the command
                tokens = tokens[2:] if tokens[0] == "--log-file" else tokens[1:]
            documented.append(tokens)
    for path in all_commands(cli):
        assert any(tokens[:len(path)] == list(path) for tokens in documented), path
