#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

    python3 tests/support/import_cycles.py actors/src

A module's imports are its `crate::<module>` and `super::<module>` paths
outside `#[cfg(test)]`;
a circle (a -> b -> ... -> a) means neither can be read or changed alone.
"""

import pathlib
import re
import sys


def modules(src):
    found = {}
    for path in src.rglob("*.rs"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "mod":
            parts.pop()
        if parts in (["lib"], ["main"]):
            continue
        found["::".join(parts)] = path
    return found


def imports(name, path, known):
    text = path.read_text().split("#[cfg(test)]")[0]
    deps = set()
    # `super::x` names a sibling: the module's parent's `x`.
    parent = name.split("::")[:-1]
    paths = re.findall(r"\b(crate|super)::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text)
    for root, use in paths:
        parts = use.split("::") if root == "crate" else parent + use.split("::")
        # The longest prefix that is a module: `store::jetstream::X` is store::jetstream.
        for n in range(len(parts), 0, -1):
            candidate = "::".join(parts[:n])
            if candidate in known:
                # A module's own parent (`store` for `store::jetstream`) holds it; not an import.
                if candidate != name and not name.startswith(candidate + "::"):
                    deps.add(candidate)
                break
    return deps


def circles(graph):
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    src = pathlib.Path(sys.argv[1])
    known = modules(src)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = circles(graph)
    for component in found:
        edges = ", ".join(f"{v} -> {w}" for v in component for w in sorted(graph[v]) if w in component)
        print(f"import circle in {src}: {edges}", file=sys.stderr)
    if not found:
        print(f"{src}: {len(known)} modules, no import circle", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
