"""The layering rules, checked over every import statement in the project's packages.

Why: a rule that holds only at module level (an import inside a function, or
under `if TYPE_CHECKING:`) is not a rule. This walks the source with `ast`, so
every `import` counts wherever it is written, and a collaborator that needs
the Bot's type for a hint is reported like any other edge.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "policies", "handlers")
MAX_LINES = 400


def module_name(path: Path) -> str:
    """`bot/store/db.py` -> `bot.store.db`; a package's `__init__` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    """Every module of the three packages by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = sources()


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ""
    if path.is_relative_to(ROOT):
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def internal_targets(module: str, names: list[str]) -> list[str]:
    """The project modules an import statement depends on (`from bot import reads` -> `bot.reads`)."""
    targets = []
    for name in names:
        if f"{module}.{name}" in MODULES:
            targets.append(f"{module}.{name}")
    if module in MODULES and len(targets) < max(len(names), 1):
        targets.append(module)
    return targets


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, self-imports left out."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in imports(path):
            edges[name].update(t for t in internal_targets(module, names) if t != name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def offenders(prefixes: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports X` for every import from a module under `prefixes` of anything under `forbidden`."""
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(prefixes):
            continue
        for module, names, line in imports(path):
            full = [module, *(f"{module}.{n}" for n in names)]
            if any(m == f or m.startswith(f + ".") for m in full for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_walk_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    """The checker itself: an import hidden in a function or a TYPE_CHECKING block is found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from bot.service import Bot\n"
        "def f():\n    import handlers.slack.run\n"
    )
    modules = [m for m, _, _ in imports(sample)]
    assert "bot.service" in modules
    assert "handlers.slack.run" in modules


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_packages_were_found() -> None:
    assert {"bot.service", "bot.commands", "handlers.cli", "bot.policy"} <= set(MODULES)


def test_no_import_cycle_between_modules() -> None:
    assert cycles(graph()) == []


def test_bot_and_policies_never_import_slack_or_handlers() -> None:
    assert offenders(("bot", "policies"), ("slack_bolt", "slack_sdk", "handlers")) == []


def test_policies_never_import_libvirt_or_the_hypervisor_package() -> None:
    assert offenders(("policies",), ("libvirt", "bot.hypervisor")) == []


def test_policies_import_from_bot_only_the_policy_interface() -> None:
    """The interface lives on the calling side (bot/policy.py); policies depend on it and nothing else in bot/."""
    allowed = {"bot.policy"}
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("policies"):
            continue
        for module, names, line in imports(path):
            for target in internal_targets(module, names) or [module]:
                if target.split(".")[0] == "bot" and target not in allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert bad == []


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = []
    for path in MODULES.values():
        for module, names, line in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != "__future__":
                bad.append(f"{path.relative_to(ROOT)}:{line} from {module} import {', '.join(private)}")
    assert bad == []


def private_reach_ins(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, expression) for every `x._name` where x is not `self` or `cls` (dunders allowed)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_reach_in_finder_tells_own_members_from_others() -> None:
    tree = ast.parse("self._a\ncls._b\nself.bot._execute\nx.__class__\nother._c\n")
    assert [expr for _, expr in private_reach_ins(tree)] == ["self.bot._execute", "other._c"]


def test_no_private_member_is_used_from_outside_its_own_object() -> None:
    bad = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(), filename=str(path))
        bad.extend(f"{path.relative_to(ROOT)}:{line} {expr}" for line, expr in private_reach_ins(tree))
    assert bad == []


OTHERS = sorted(p for folder in ("tests", "bench", "scripts") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize(
    "path", [*(MODULES[n] for n in sorted(MODULES)), *OTHERS], ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_module_over_400_lines(path: Path) -> None:
    """The packages, and the tests and benchmarks beside them: a file past 400 lines holds two jobs."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_bot_has_sub_packages_by_concern() -> None:
    for package in ("hypervisor", "store", "approval"):
        assert (ROOT / "bot" / package / "__init__.py").is_file()
