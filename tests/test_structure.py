"""The shape of the package: the streaming core imports no ML library, no import circle, the
protocol's language list is the model library's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from faster_whisper.tokenizer import _LANGUAGE_CODES

from whisperwire.protocol import WHISPER_LANGUAGES

PACKAGE = Path(__file__).resolve().parents[1] / "whisperwire"
CORE = ["values", "protocol", "options", "endpointer", "finals", "guards", "messages", "session"]
ML = ["ctranslate2", "faster_whisper", "onnxruntime", "tokenizers"]


def test_the_core_imports_no_ml_library() -> None:
    imports = "; ".join(f"import whisperwire.{name}" for name in CORE)
    check = f"import sys; {imports}; print(sorted(m for m in {ML!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_language_list_is_the_model_librarys() -> None:
    assert WHISPER_LANGUAGES == frozenset(_LANGUAGE_CODES)


def _imports(module: Path) -> set[str]:
    """The package modules ``module`` imports, at load time or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1 and node.module:  # from .x import y
            found.add(node.module)
        elif node.level == 1 or node.module == "whisperwire":  # from . import x
            found.update(alias.name for alias in node.names)
        elif node.module and node.module.startswith("whisperwire."):
            found.add(node.module.split(".")[1])
    return {name for name in found if (PACKAGE / f"{name}.py").exists()}


def test_no_import_circle() -> None:
    graph = {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}

    def circle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                found = circle_from(start, [*path, nxt])
                if found:
                    return found
        return None

    circles = [c for name in graph if (c := circle_from(name, [name]))]
    assert circles == [], circles
def test_no_module_over_450_lines() -> None:
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}, long
