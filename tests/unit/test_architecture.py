"""The project's shape, kept so: no import cycles among its modules (imports inside functions
count; ``if TYPE_CHECKING:`` ones do not), and no module too long to hold in one's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actsteer", "langchain_steer", "llamaindex_steer")
MAX_LINES = 460


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
    """The project modules ``name`` imports anywhere but under ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
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
