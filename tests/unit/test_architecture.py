"""The project's shape, kept so: no import cycles among its modules (imports inside functions
and under ``if TYPE_CHECKING:`` count: a type-only cycle is still two modules that cannot be
understood apart), layers that import only downward, and no module too long to hold in one's
head."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actsteer", "langchain_steer", "llamaindex_steer")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere (functions and ``TYPE_CHECKING`` too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                found.update(f"{module}.{a.name}" for a in child.names)
                if child.module:
                    found.add(module)
            visit(child)

    visit(ast.parse(path.read_text()))
    resolved = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        # a module's own package is imported before it anyway: not an edge
        if target and target != name and not name.startswith(target + "."):
            resolved.add(target)
    return resolved


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_no_import_cycles():
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    assert graph["actsteer.runtime.model"], "the import scan found nothing: it is broken"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_resolving_a_steering_imports_nothing_that_trains():
    """A server's front end resolves steerings with no model to train on: ``resolve`` (and what
    it imports) must never reach ``actsteer.train``."""
    graph = _graph()
    reached = _reach(graph, "actsteer.resolve")
    assert not {m for m in reached if m.startswith("actsteer.train")}, sorted(reached)
    assert not {m for m in _reach(graph, "actsteer.vllm.served") if m.startswith("actsteer.train")}


#: What each layer may import besides itself and ``actsteer.errors``.
LAYERS = {
    "actsteer.core": (),
    "actsteer.apply": ("actsteer.core",),
    "actsteer.sources": ("actsteer.core", "actsteer.presets", "actsteer.default_model"),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_downward(layer):
    allowed = (layer, "actsteer.errors", *LAYERS[layer])
    graph = _graph()
    bad = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    }
    assert not bad, sorted(bad)


def test_the_core_needs_no_transformers():
    for name, path in _modules().items():
        if name.startswith("actsteer.core"):
            assert not re.search(r"^\s*(from|import) transformers", path.read_text(), re.M), name


@pytest.mark.parametrize(
    "name", ["actsteer.engine", "actsteer.call_options", "actsteer.resolve", "actsteer.remote"]
)
def test_the_request_side_needs_no_transformers(name):
    """Building and resolving a request, and sending it to a server, import nothing that needs
    transformers (a client of ``actsteer serve`` need not install it to steer)."""
    modules, graph = _modules(), _graph()
    reached = {m for m in _reach(graph, name) | {name}}
    needs = [
        m
        for m in reached
        if re.search(r"^\s*(from|import) transformers", modules[m].read_text(), re.M)
    ]
    assert not needs, needs


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_stay_short(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concern"


#: Private names read across a boundary on purpose, each with its reason.
ALLOWED_PRIVATE = {
    # vLLM's CPU runner has no public seam for the step's request order (pinned version)
    ("actsteer.vllm.runner", "_prepare_inputs"),
    # the batch protocol of langchain_steer's adapters (defined in _common, one package)
    ("langchain_steer._batch", "_batch_request"),
    ("langchain_steer._batch", "_copy_with"),
}


def _private_reads(path: Path) -> list[tuple[int, str]]:
    """``obj._name`` reads of a name the module does not define itself (``self``, ``cls``
    and ``super()`` are the module's own), and any ``obj.__dict__`` write-through."""
    tree = ast.parse(path.read_text())
    own = {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    own |= {
        t.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign | ast.AnnAssign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Attribute)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = ast.unparse(node.value)
        if node.attr == "__dict__" and base not in ("self", "cls"):
            found.append((node.lineno, f"{base}.__dict__"))
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if private and base not in ("self", "cls", "super()") and node.attr not in own:
            found.append((node.lineno, f"{base}.{node.attr}"))
    return found


def test_no_module_reads_another_ones_private_state():
    """The model's working parts are public (``SteeredModel.handle``); nothing reaches into
    ``sm._pad`` / ``sm._layer_devices`` or stores memos in an object's ``__dict__``."""
    bad = [
        f"{name}:{line}: {what}"
        for name, path in _modules().items()
        for line, what in _private_reads(path)
        if (name, what.rpartition(".")[2]) not in ALLOWED_PRIVATE
    ]
    assert not bad, "private state read across modules:\n" + "\n".join(bad)


def test_the_private_read_check_finds_one(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f(sm):\n    return sm._pad([]), sm.__dict__, super()._x\n")
    assert sorted(_private_reads(path)) == [(2, "sm.__dict__"), (2, "sm._pad")]


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "bench").glob("*.py")) + sorted((ROOT / "cookbook").glob("*.py")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_scripts_import_what_exists(path):
    """The benchmarks and cookbook recipes run by hand, not in CI: every name they import from
    the project must still be there (a module moved or a helper renamed breaks them silently)."""
    import importlib.util

    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level:
            continue
        if (node.module or "").split(".")[0] not in PACKAGES:
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            name = f"{node.module}.{alias.name}"
            assert hasattr(module, alias.name) or importlib.util.find_spec(name), name
