"""The package's import graph, read with `ast` (function-local imports included): no cycles, and
three layers that each import only downward (1: IR helpers, op tables, errors, targets; 2:
frontends, passes, the quantizer, backends; 3: drivers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qcompile"

LAYER_1 = {"errors", "atomic", "threads", "targets", "toolchain", "artifact", "ir", "ops", "layers", "examples",
           "timing", "background"}
LAYER_2 = {"frontends", "passes", "quantize", "backends", "records", "peer"}
# zoo: a streaming model's samples carry the state its own runtime reached (verification's reference)
LAYER_3 = {"api", "builder", "cli", "debug", "debug_report", "demo", "execute", "mixed", "report", "session", "tuning",
           "verification", "zoo"}


def module_name(path: Path) -> str:
    parts = ["qcompile", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body (a package import counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    return 1 if top in LAYER_1 else 2 if top in LAYER_2 else 3


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_is_placed_in_one_layer():
    tops = {name.split(".")[1] for name in modules() if "." in name}
    assert tops == LAYER_1 | LAYER_2 | LAYER_3
    assert not (LAYER_1 & LAYER_2 or LAYER_2 & LAYER_3 or LAYER_1 & LAYER_3)


def test_the_reader_sees_function_local_and_relative_imports():
    edges = graph()
    assert "qcompile.passes.canonicalize_clip" in edges["qcompile.passes"]  # imported inside float_passes()
    assert "qcompile.ir" in edges["qcompile.quantize.annotate"]  # from ..ir import ...


def test_a_cycle_would_be_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_each_layer_imports_only_downward():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph().items() for b in targets if layer(b) > layer(a) and b != "qcompile"]
    assert not upward, "\n".join(upward)


def test_only_drivers_import_the_package_root():
    # `import qcompile` runs the public API's imports (the drivers): a layer-1 or -2 module doing so
    # would reach upward
    assert not [a for a, targets in graph().items() if "qcompile" in targets and layer(a) < 3]


def test_build_never_imports_the_search():
    """A build takes a precision configuration; the search ends by calling build."""
    edges = graph()
    reach, todo = set(), ["qcompile.builder"]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert not {m for m in reach if m.startswith(("qcompile.mixed", "qcompile.tuning"))}


def test_the_target_kind_is_compared_with_a_string_in_one_place():
    """The backend for a kind is chosen once (backends.backend_for, by key); nothing else compares
    a spec's or a backend's kind with a kind name."""
    kinds = {"cpu", "llvm", "cuda", "vulkan", "webgpu"}
    places = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            sides = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
            if any(isinstance(side, ast.Attribute) and side.attr == "kind" for side in sides) and any(
                    isinstance(side, ast.Constant) and side.value in kinds for side in sides):
                places.append(f"{name}:{node.lineno}")
    assert not places, places
    source = (PACKAGE / "backends" / "__init__.py").read_text()
    assert '{"cpu": CPUBackend, "cuda": CUDABackend, "vulkan": VulkanBackend}[spec.kind]' in source
