"""Checks the package's architecture rules (docs/design.md): the import direction between
its layers, no import cycle, imports at the top of files, and the size of modules and
functions. Reads the source with `ast`; imports nothing of the package.

Layers, lowest first (a module may import its own layer and the ones below):
    0 base        console, checks (leaf helpers), layers
    1 models
    2 preprocessing, preset_registry (plain data)
    3 convert, distribution, export, presets (fetching, conversion), tasks, training
    4 cli, registration, the package's __init__

Usage: python tools/check_architecture.py [PACKAGE_DIR] [--max-module-lines N]
[--max-function-lines N]. Prints one line per finding and exits 1 when there is one.
"""

import argparse
import ast
import os
import sys

LAYERS = {
    "console": 0, "checks": 0, "layers": 0,
    "models": 1,
    "preprocessing": 2, "preset_registry": 2,
    "convert": 3, "distribution": 3, "export": 3, "media": 3, "presets": 3, "tasks": 3,
    "training": 3,
    "cli": 4, "registration": 4, "": 4,
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# A function-level import is allowed when this marker comments its line or the line
# above, with the reason (an optional or heavy dependency).
LAZY_MARKER = "# lazy:"
# Stated exceptions: path (relative to the package) or "path:function" -> reason.
EXCEPTIONS = {}


def module_name(package_dir, path):
    """`pkg.a.b` for PACKAGE_DIR/a/b.py (`pkg.a` for a/__init__.py)."""
    rel = os.path.relpath(path, package_dir)[: -len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join([os.path.basename(package_dir.rstrip(os.sep))] + rel)


def layer_of(module, package):
    """The layer number of a module of the package (by its first component)."""
    parts = module.split(".")[1:]
    head = parts[0] if parts else ""
    if head not in LAYERS:
        raise KeyError(f"{module}: its package part {head!r} has no layer in LAYERS")
    return LAYERS[head]


def _resolve(node, module, is_package, package):
    """Absolute names of the package's modules an Import / ImportFrom node imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == package]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([base] if base else []))
    if base.split(".")[0] != package:
        return []
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _is_marked(lines, lineno):
    return any(LAZY_MARKER in lines[i - 1] for i in (lineno, lineno - 1) if i >= 1)


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def scan_module(package_dir, path, package):
    """(module, imports [(target, lineno, lazy)], lines, tree) of one file."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, filename=path)
    module = module_name(package_dir, path)
    is_package = os.path.basename(path) == "__init__.py"
    inside = {id(n) for fn in _functions(tree) for n in ast.walk(fn) if n is not fn}
    lines = source.splitlines()
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            lazy = id(node) in inside
            for target in _resolve(node, module, is_package, package):
                imports.append((target, node.lineno, lazy))
            if lazy and not imports_only_package(node, package) and not _is_marked(
                    lines, node.lineno):
                imports.append((None, node.lineno, True))  # unmarked third-party lazy
    return module, imports, lines, tree


def imports_only_package(node, package):
    if isinstance(node, ast.Import):
        return all(a.name.split(".")[0] == package for a in node.names)
    return bool(node.level) or (node.module or "").split(".")[0] == package


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def _known(target, modules):
    """The scanned module a dotted import target names (`pkg.a.b.Name` -> `pkg.a.b`)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def check(package_dir, max_module_lines=MAX_MODULE_LINES,
          max_function_lines=MAX_FUNCTION_LINES):
    """All findings (strings) for the package in `package_dir`."""
    package = os.path.basename(package_dir.rstrip(os.sep))
    scanned = {}
    for folder, _, files in os.walk(package_dir):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module, imports, lines, tree = scan_module(package_dir, path, package)
                scanned[module] = (os.path.relpath(path, package_dir), imports, lines, tree)
    findings, graph = [], {m: set() for m in scanned}
    for module, (rel, imports, lines, tree) in sorted(scanned.items()):
        own = layer_of(module, package)
        resolved = {(_known(t, scanned) if t else None, n, lazy) for t, n, lazy in imports}
        for target, lineno, lazy in sorted(resolved, key=lambda r: (r[1], r[0] or "")):
            where = f"{rel}:{lineno}"
            if target is None:  # a third-party import inside a function
                findings.append(f"{where}: function-level import without '{LAZY_MARKER} "
                                "<reason>' comment")
                continue
            if target == module or module.startswith(target + "."):
                continue  # a package's own __init__ above it, or itself
            graph[module].add(target)
            if layer_of(target, package) > own:
                findings.append(f"{where}: {module} (layer {own}) imports {target} "
                                f"(layer {layer_of(target, package)}): upward")
            if lazy and not _is_marked(lines, lineno):
                findings.append(f"{where}: {module} imports {target} inside a function "
                                f"(move it to the top, or comment '{LAZY_MARKER} <reason>')")
        if len(lines) > max_module_lines and rel not in EXCEPTIONS:
            findings.append(f"{rel}: {len(lines)} lines (limit {max_module_lines})")
        for fn in _functions(tree):
            size = fn.end_lineno - fn.lineno + 1
            if size > max_function_lines and f"{rel}:{fn.name}" not in EXCEPTIONS:
                findings.append(f"{rel}:{fn.lineno}: function {fn.name} has {size} lines "
                                f"(limit {max_function_lines})")
    for component in _cycles(graph):
        findings.append(f"import cycle among {len(component)} modules: "
                        + ", ".join(component))
    return findings


def main(argv=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", nargs="?", default=os.path.join(here, "keras_siglip2"))
    parser.add_argument("--max-module-lines", type=int, default=MAX_MODULE_LINES)
    parser.add_argument("--max-function-lines", type=int, default=MAX_FUNCTION_LINES)
    args = parser.parse_args(argv)
    findings = check(args.package_dir, args.max_module_lines, args.max_function_lines)
    for line in findings:
        print(line)
    print(f"{len(findings)} finding(s)", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
