"""The rooms of the package and the one-way arrows between them (docs/architecture.md).

Every import in every module, at any depth (function-level imports too), is read from the source
with `ast`, relative imports resolved, and checked against the layer rules below. A forbidden
import added anywhere makes one of these tests fail and names the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Rooms in dependency order: a module may import llava_avc modules of its own room or an EARLIER one.
LAYERS = ("errors", "algorithm", "decode", "backends", "eval", "interfaces", "testing")
#: Rooms that may not import `llava` or `transformers` at all.
NO_MODEL_LIBRARIES = ("algorithm", "decode")
#: Rooms that may import `transformers` only as the top-level package (versions, public classes
#: such as `from transformers import X`), and `llava` not at all: the backends do that for them.
PUBLIC_TRANSFORMERS_ONLY = ("eval", "interfaces")


def _module_name(path: Path) -> str:
    """Dotted name of a source file (the repository's patches/ is installed as llava_avc.patches)."""
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "patches":
        parts = ["llava_avc", "patches"] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str | None:
    """The room of a llava_avc module; the patches belong to the backends (the original-LLaVA backend)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None  # llava_avc/__init__.py, the lazy public facade, and __main__
    if parts[1] == "patches":
        return "backends"
    return parts[1] if parts[1] in LAYERS else None


def _backend(module: str) -> str | None:
    """The backend a module belongs to (patches/ is the original-LLaVA backend's), else None."""
    parts = module.split(".")
    if parts[:2] == ["llava_avc", "patches"]:
        return "llava"
    if parts[:2] == ["llava_avc", "backends"] and len(parts) > 3:
        return parts[2]
    if parts[:2] == ["llava_avc", "backends"] and len(parts) == 3 and parts[2] in ("llava", "hf"):
        return parts[2]
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import x` imports the submodules x
                    found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                    continue
            else:
                target = node.module
            found.append((node.lineno, target))
    return found


def _sources() -> list[Path]:
    files = sorted((ROOT / "llava_avc").rglob("*.py")) + sorted((ROOT / "patches").rglob("*.py"))
    return [path for path in files if "__pycache__" not in path.parts]


def _violations(path: Path) -> list[str]:
    room = _room(_module_name(path))
    if room is None:
        return []
    problems = []
    for line, target in _imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        root = target.split(".")[0]
        if root == "llava_avc":
            other = _room(target)
            mine, theirs = _backend(_module_name(path)), _backend(target)
            if mine and theirs and mine != theirs:
                problems.append(f"{where}: backend {mine} may not import backend {theirs} (share code through "
                                "llava_avc.backends' own modules)")
            if target.startswith("llava_avc.patches") and not _module_name(path).startswith("llava_avc.patches") \
                    and room == "backends":
                problems.append(f"{where}: the backends never import patches/ (it sits on top of the llava backend)")
            if other is not None and LAYERS.index(other) > LAYERS.index(room):
                problems.append(f"{where}: {room} may not import {other} (rooms in order: {', '.join(LAYERS)}; "
                                "a room imports only itself and earlier rooms)")
        elif room in NO_MODEL_LIBRARIES and root in ("llava", "transformers"):
            problems.append(f"{where}: {room} is pure tensors; reach the model through the ModelAdapter")
        elif room in PUBLIC_TRANSFORMERS_ONLY and (root == "llava" or (root == "transformers" and target != root)):
            problems.append(f"{where}: {room} may not reach into LLaVA or transformers; go through a backend")
    return problems


def test_every_source_file_is_in_a_room():
    homeless = [str(path.relative_to(ROOT)) for path in _sources()
                if _room(_module_name(path)) is None and _module_name(path) not in ("llava_avc", "llava_avc.__main__")]
    assert not homeless, homeless


@pytest.mark.parametrize("path", _sources(), ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_follow_the_arrows(path):
    assert _violations(path) == []


def test_the_rule_catches_an_upward_import_and_a_model_library_in_the_algorithm(tmp_path):
    """The checker itself: a decode-loop file importing the eval harness, or the algorithm importing
    transformers, is reported."""
    fake_root = tmp_path
    (fake_root / "llava_avc" / "decode").mkdir(parents=True)
    (fake_root / "llava_avc" / "algorithm").mkdir()
    bad_decode = fake_root / "llava_avc" / "decode" / "bad.py"
    bad_decode.write_text("from ..eval import runner\n")
    (fake_root / "llava_avc" / "backends" / "hf").mkdir(parents=True)
    bad_backend = fake_root / "llava_avc" / "backends" / "hf" / "bad.py"
    bad_backend.write_text("from ..llava.prompts import build_prompt\n")
    bad_algorithm = fake_root / "llava_avc" / "algorithm" / "bad.py"
    bad_algorithm.write_text("def f():\n    from transformers.cache_utils import DynamicCache\n")
    globals()["ROOT"] = fake_root
    try:
        assert _violations(bad_decode) == [
            "llava_avc/decode/bad.py:1 imports llava_avc.eval: decode may not import eval (rooms in order: "
            "errors, algorithm, decode, backends, eval, interfaces, testing; a room imports only itself and earlier "
            "rooms)"]
        assert len(_violations(bad_algorithm)) == 1 and "transformers.cache_utils" in _violations(bad_algorithm)[0]
        assert _violations(bad_backend) == [
            "llava_avc/backends/hf/bad.py:1 imports llava_avc.backends.llava.prompts: backend hf may not import "
            "backend llava (share code through llava_avc.backends' own modules)"]
    finally:
        globals()["ROOT"] = Path(__file__).resolve().parents[2]


def _file_graph() -> dict:
    """{module: the llava_avc modules it imports} (every import, at any depth), over the source files."""
    modules = {_module_name(path): path for path in _sources()}
    graph = {}
    for module, path in modules.items():
        edges = set()
        for _, target in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_two_files_import_each_other_even_indirectly():
    assert _cycles(_file_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
