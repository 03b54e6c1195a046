"""The package layers, checked: every arrow points down.

    semlink (CLI, demo, bench)  ->  device | server | link  ->  runtime  ->  protocol
    models (torch, training)    ->  runtime  ->  protocol

Serving code (device, server, link, runtime, protocol) never imports the training package or the
command line, the device never imports the server (nor the reverse), and no module imports
itself back through others. Read statically from the files' imports, plus one real import of
every serving module with torch blocked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING = ("device", "server", "link", "runtime", "protocol")
# what each serving layer may import from semlink, besides itself
ALLOWED = {
    "protocol": set(),
    "runtime": {"protocol"},
    "device": {"runtime", "protocol"},
    "server": {"runtime", "protocol"},
    "link": {"runtime", "protocol"},
}


def _modules() -> dict[str, Path]:
    """``semlink.x.y`` -> file, for the command line package and the linked layer folders."""
    out = {}
    for top in ("semlink", *SERVING, "models"):
        for path in (ROOT / top).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts if parts[0] == "semlink" else ["semlink", *parts])
            out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The semlink modules a file imports, leaving out imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    hidden = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES)
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*SERVING, "models") else "cli"


def test_every_layer_file_is_seen():
    assert {"semlink.device.service", "semlink.server.core", "semlink.runtime.manifest"} <= set(
        GRAPH
    )


@pytest.mark.parametrize("layer", SERVING)
def test_serving_layers_import_only_downwards(layer):
    crossings = [
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if _layer(m) == layer
        for d in sorted(deps)
        if _layer(d) != layer and _layer(d) not in ALLOWED[layer]
    ]
    assert not crossings, f"{layer} may import only {sorted(ALLOWED[layer])}: " + "; ".join(
        crossings
    )


def test_the_architecture_page_lists_every_import_between_packages():
    """docs/architecture.md lists, under its package diagram, which package imports which; the
    list must be what the files import, no arrow more and none less."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    drawn = set()
    for line in text.splitlines():
        if m := re.match(r"- `(\w+)` → (.*)", line):
            source = "cli" if m[1] == "semlink" else m[1]
            targets = re.findall(r"`(\w+)`", m[2].split("(")[0])
            drawn |= {(source, "cli" if t == "semlink" else t) for t in targets}
    real = {
        (_layer(m), _layer(d)) for m, deps in GRAPH.items() for d in deps if _layer(m) != _layer(d)
    }
    assert drawn == real, (
        f"drawn, not imported: {drawn - real}; imported, not drawn: {real - drawn}"
    )


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_serving_imports_without_torch_or_the_command_line():
    """Importing every serving module with torch, the training package and the CLI blocked."""
    serving = sorted(m for m in GRAPH if _layer(m) in SERVING)
    code = (
        "import sys\n"
        "for blocked in ('torch', 'semlink.models', 'semlink.cli',"
        " 'semlink.bench', 'semlink.demo'):\n"
        "    sys.modules[blocked] = None\n"
        f"import importlib\nfor m in {serving!r}:\n    importlib.import_module(m)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_public_serving_api_has_a_docstring():
    missing = []
    for name, path in MODULES.items():
        if _layer(name) not in SERVING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if is_def and not node.name.startswith("_") and ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not missing, "public serving code without a docstring:\n" + "\n".join(missing)


MAX_FUNCTION_LINES = 80


def test_no_serving_function_is_longer_than_a_screen():
    """Every function of the serving code fits in 80 lines (a request's walk reads as named
    steps, not as one long body)."""
    long = []
    for layer in SERVING:
        for path in (ROOT / layer).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, long
