"""Without the optional onnx package, dlsoft imports and its ONNX commands fail in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "dlsoft" / "model_zoo" / "entries" / "lenet_mnist"

# `import onnx` fails as it does where the package is not installed.
BLOCK_ONNX = "import sys; sys.modules['onnx'] = None; "


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_ONNX + code, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_import_dlsoft_and_cli_work_without_onnx(tmp_path):
    done = _python("import dlsoft, dlsoft.onnx; print(dlsoft.Net.__name__); from dlsoft.cli import main; main()",
                   "export", str(LENET / "deploy.prototxt"),
                   str(LENET / "lenet_mnist.caffemodel"), str(tmp_path / "x.onnx"))
    assert done.returncode == 2 and done.stdout.strip() == "Net", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dlsoft[onnx]'" in lines[0], done.stderr
