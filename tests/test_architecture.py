"""The layout ARCHITECTURE.md describes: every module named there, imports flowing one way."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dlsoft"
DOC = ROOT / "ARCHITECTURE.md"

#: Higher may import lower (or the same rank), never the reverse.
RANKS = {
    "cli": 6, "__main__": 6,
    "distributed": 5.5,  # between the CLI and the solver it drives
    "caffe": 6,  # pycaffe's API, beside the CLI, on top
    "solver": 5, "model_zoo": 5, "zoo": 5, "timing": 5, "plot": 5, "__init__": 5,
    "netdef": 4, "onnx": 4,  # onnx: another encoding of a net, beside netdef (Net.export_onnx delegates to it)
    "layers": 3,
    "data": 2,
    "fileio": 1, "backend": 1, "blob": 1, "errors": 1, "random": 1, "zoo_ref": 1, "threads": 1,
    "protos": 0,
}


#: Known breaches, each with what it is and where it should go. The rules hold for every
#: other module; shrink these lists, never grow them.
KNOWN_UPWARD: dict = {}
KNOWN_LONG: dict = {}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "caffe_pb2.py" and "entries" not in p.parts)


def part(module: str) -> str:
    """The top-level part of ``dlsoft.x.y`` (``x``)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imported(path: Path) -> set[str]:
    """Every dlsoft module ``path`` imports (at any depth of the file, relative ones resolved)."""
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("dlsoft"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dlsoft"):
                names.add(target)
                names.update(f"{target}.{a.name}" for a in node.names)  # `from . import x`: module x
    return names


def test_imports_flow_one_way():
    upward = []
    for path in modules():
        here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mine = RANKS[part(here)]
        for name in imported(path):
            theirs = RANKS.get(part(name))
            known = (str(path.relative_to(ROOT)), ".".join(name.split(".")[:2])) in KNOWN_UPWARD
            if theirs is not None and theirs > mine and part(name) != "__init__" and not known:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, "imports flowing upward:\n" + "\n".join(sorted(upward))


def test_every_module_is_in_architecture_md():
    text = DOC.read_text(encoding="utf-8")
    missing = [str(p.relative_to(ROOT)) for p in modules()
               if p.name not in ("__init__.py", "__main__.py") and f"`{p.stem}" not in text and f"{p.stem}`" not in text]
    assert not missing, f"modules ARCHITECTURE.md does not name: {missing}"


def test_no_module_is_too_long():
    """Split by family as Caffe keeps one layer per file: ~600 lines at most, ~400 for the CLI."""
    long = [f"{p.relative_to(ROOT)}: {n}" for p in modules() if str(p.relative_to(ROOT)) not in KNOWN_LONG
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > (400 if "cli" in p.parts else 620)]
    assert not long, long
