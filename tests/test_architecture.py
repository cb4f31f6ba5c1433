"""The folders are the architecture: imports run one way, from frontends down through the stages to the
base, with no circle, no core module importing a frontend, and no frontend importing another (launchers
excepted by name). The map here is the README's "Architecture" section."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stylesearch"

# lower number = lower layer; a module may import only its own layer or lower ones
LAYERS = {
    "errors": 0, "progress": 0, "choices": 0, "version": 0, "cores": 0,
    "store": 1, "ingest": 2, "embed": 3, "learn": 4, "index": 5, "query": 6, "maps": 7,
    "pipeline": 8, "api": 8, "": 8,
    "cli": 9, "tui": 9, "server": 9, "__main__": 10,
}
FRONTENDS = {"cli", "tui", "server"}
LAUNCHERS = {("cli.learn_cmd", "tui"), ("cli.serve_cmd", "server")}  # a command that starts another frontend


def module_name(file: Path, root: Path) -> str:
    rel = file.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at the top or inside functions)."""
    files = {module_name(f, root): f for f in root.rglob("*.py")}
    graph = {}
    for name, file in files.items():
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                    target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                elif (node.module or "").split(".")[0] == "stylesearch":
                    target = node.module.partition(".")[2]
                else:
                    continue
                modules = {f"{target}.{a.name}".strip(".") for a in node.names}
                found.update(modules & set(files))
                if modules - set(files):  # a name defined in `target` itself (a module, or a package's init)
                    found.add(target)
            elif isinstance(node, ast.Import):
                found.update(a.name.partition(".")[2] for a in node.names if a.name.startswith("stylesearch."))
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def layer_of(module: str) -> tuple[str, int]:
    top = module.split(".")[0]
    if top not in LAYERS:
        raise AssertionError(f"module {module!r} is in no layer: add its folder to LAYERS and the README map")
    return top, LAYERS[top]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Arrows that run back up, from the core to a frontend, or between frontends."""
    out = []
    for module, targets in graph.items():
        top, layer = layer_of(module)
        for target in targets:
            other, other_layer = layer_of(target)
            if top in FRONTENDS and other in FRONTENDS and other != top:
                if (module, other) not in LAUNCHERS:
                    out.append(f"frontend {module} imports frontend {target}")
            elif other_layer > layer:
                out.append(f"{module} (layer {top}) imports {target} (higher layer {other})")
    return sorted(out)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (strongly connected groups of more than one module), by Tarjan's algorithm."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_imports_run_one_way_with_no_circle():
    graph = import_graph()
    assert len(graph) > 60 and "store.paths" in graph and "query.search" in graph
    assert violations(graph) == []
    assert circles(graph) == []


def test_the_check_fails_on_a_planted_back_import_and_circle(tmp_path):
    graph = import_graph()
    planted = {**graph, "store.paths": graph["store.paths"] | {"query.search"}}
    assert violations(planted) == ["store.paths (layer store) imports query.search (higher layer query)"]
    assert any("store.paths" in group and "query.search" in group for group in circles(planted))
    assert violations({**graph, "server.routes": graph["server.routes"] | {"cli.common"}}) == [
        "frontend server.routes imports frontend cli.common"]
    assert violations({**graph, "maps.atlas": graph["maps.atlas"] | {"tui.label_app"}}) == [
        "maps.atlas (layer maps) imports tui.label_app (higher layer tui)"]
    # and on real files: a copy of the package with one back-import written into a module
    copy = tmp_path / "stylesearch"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    scan = copy / "ingest" / "scan.py"
    scan.write_text(scan.read_text() + "\n\ndef _planted():\n    from ..maps.atlas import build_atlas\n")
    assert violations(import_graph(copy)) == ["ingest.scan (layer ingest) imports maps.atlas (higher layer maps)"]


def test_package_inits_are_import_free_except_the_api():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        tree = ast.parse(init.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], init
        assert ast.get_docstring(tree), f"{init} says what its folder holds"


def test_each_stage_is_a_folder_and_no_prefix_stands_in_for_one():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert top == ["cli", "embed", "index", "ingest", "learn", "maps", "query", "server", "store", "tui"]
    for folder in [PACKAGE, *[PACKAGE / name for name in top]]:
        stems = [f.stem for f in folder.glob("*.py") if not f.stem.startswith("_")]
        prefixes = {}
        for stem in stems:
            if "_" in stem and not stem.endswith("_cmd"):
                prefixes.setdefault(stem.split("_")[0], []).append(stem)
        assert not {p: s for p, s in prefixes.items() if len(s) > 1}, folder


@pytest.mark.parametrize("code", ["import stylesearch", "import stylesearch; stylesearch.datasets"])
def test_import_stylesearch_stays_light(code):
    heavy = ["numpy", "torch", "open_clip", "faiss", "umap", "PIL", "onnxruntime", "textual", "fastapi", "typer"]
    probe = f"{code}; import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
