"""Print the package's internal import graph (module -> modules it imports) and its cycles.

Usage: python tools/import_graph.py [src/ssd_trt]. Reads the source with ast, imports nothing.
Function-level imports are listed separately: the package keeps them for heavy optional
dependencies only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    top = root.name
    edges: dict[str, set[str]] = {}
    local: dict[str, list[str]] = {}
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        tree = ast.parse(path.read_text())
        edges[name] = set()
        toplevel = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                mod = resolve(node, name, path.name == "__init__.py")
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                # "from pkg import module" depends on the module, not on the package's names.
                targets = subs if len(subs) == len(node.names) else [mod, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            inner = [t for t in targets if t.split(".")[0] == top and t in modules and t != name]
            nested = id(node) not in toplevel and not _in_type_checking(tree, node)
            if nested:
                local.setdefault(name, []).extend(targets)
            edges[name].update(inner)
    return edges, local


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for top in tree.body:
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test):
            if any(n is node for n in ast.walk(top)):
                return True
    return False


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cyc = stack[stack.index(nxt) :]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    found.append([*cyc, nxt])
            elif len(stack) < 40:
                visit(nxt, [*stack, nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "src/ssd_trt")
    edges, local = graph(root)
    for name in sorted(edges):
        deps = sorted(d for d in edges[name] if not name.startswith(d + "."))
        print(f"{name} -> {', '.join(deps) if deps else '-'}")
    found = cycles(edges)
    print(f"\ncycles: {len(found)}")
    for cyc in found:
        print("  " + " -> ".join(cyc))
    print("\nfunction-level imports:")
    total = 0
    for name in sorted(local):
        total += len(local[name])
        print(f"  {name}: {', '.join(sorted(set(local[name])))}")
    print(f"  ({total} in all)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
