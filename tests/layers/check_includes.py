#!/usr/bin/env python3
"""The layers the build enforces, checked against their one written statement.

Reads the component table of docs/architecture.md ("Components and their dependencies": which component
uses which) and checks every #include in src/ and include/ferry/ against it, both ways: a component may
include only what its row lists, and its row lists only what it includes (so the table stays true).
Then the rules of shared/DESIGN.md that hold whatever the table says: the SDK includes nothing of src/;
runtimes use only the SDK; the proxy never reaches the controller; common depends on no other component;
no component includes another's internal/ headers; and the control plane (controller, admin) does not
link the replica host or the runtimes, in CMakeLists.txt's link graph.

Usage: check_includes.py [SOURCE_DIR]. Exit 0 when all hold; otherwise each violation on a line, exit 1.
"""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../.."))
SDK = "sdk"


def components():
    return sorted(d for d in os.listdir(os.path.join(ROOT, "src")) if os.path.isdir(os.path.join(ROOT, "src", d)))


def sources(component):
    base = os.path.join(ROOT, "include", "ferry") if component == SDK else os.path.join(ROOT, "src", component)
    for dirpath, _, files in os.walk(base):
        for f in files:
            if f.endswith((".h", ".cc", ".hpp", ".cpp")):
                yield os.path.join(dirpath, f)


INCLUDE = re.compile(r'^\s*#\s*include\s+([<"])([^>"]+)[>"]')


def includes(path, names):
    """(line number, component, header) for each include of a ferry component in `path`."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            header = m.group(2)
            first = header.split("/", 1)[0]
            if m.group(1) == "<" and first == "ferry":
                yield n, SDK, header
            elif m.group(1) == '"' and first in names and "/" in header:
                yield n, first, header


def table(names):
    """{component: set of components it uses}, from docs/architecture.md."""
    text = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    section = text.split("## Components and their dependencies", 1)[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        m = re.match(r"`(?:src/([a-z_]+)/|include/ferry/)`", cells[0])
        if not m:
            continue
        name = m.group(1) or SDK
        uses = cells[2]
        if uses.strip() in ("all", "every component"):
            rows[name] = set(names) | {SDK}
            continue
        words = set(re.findall(r"[A-Za-z_]+", uses))
        found = {w for w in words if w in names}
        if "SDK" in words or "sdk" in words:
            found.add(SDK)
        rows[name] = found
    return rows


def link_graph():
    """{target: set of ferry_* targets it links}, from CMakeLists.txt."""
    text = open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8").read()
    graph = {}
    for m in re.finditer(r"target_link_libraries\(\s*(ferry\w*)([^)]*)\)", text):
        graph.setdefault(m.group(1), set()).update(re.findall(r"\b(ferry_\w+)\b", m.group(2)))
    return graph


def closure(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def main():
    names = components()
    allowed = table(names)
    problems = []
    for c in names + [SDK]:
        if c not in allowed and c != "cli":
            problems.append(f"docs/architecture.md: no row for component {c}")
    actual = {}
    for c in names + [SDK]:
        used = set()
        for path in sources(c):
            rel = os.path.relpath(path, ROOT)
            for n, other, header in includes(path, names):
                if other == c:
                    continue
                used.add(other)
                if "/internal/" in header:
                    problems.append(f"{rel}:{n}: includes {header}, another component's internal header")
                if c in allowed and other not in allowed[c]:
                    problems.append(f"{rel}:{n}: {c} includes {header}, but docs/architecture.md does not list "
                                    f"{other} among what {c} uses")
        actual[c] = used
    for c, listed in allowed.items():
        if c == "cli":
            continue
        for other in sorted(listed - actual.get(c, set())):
            problems.append(f"docs/architecture.md: the row of {c} lists {other}, which {c} does not include")
    # The design's fixed rules.
    if actual.get(SDK):
        problems.append(f"the SDK (include/ferry) includes {sorted(actual[SDK])}: it must include nothing of src/")
    if actual.get("runtimes", set()) - {SDK}:
        problems.append(f"runtimes include {sorted(actual['runtimes'] - {SDK})}: they may use only the SDK")
    if "controller" in actual.get("proxy", set()):
        problems.append("the proxy includes the controller: the data plane reads published state only")
    if actual.get("common"):
        problems.append(f"common includes {sorted(actual['common'])}: it must depend on no other component")
    graph = link_graph()
    for plane in ("ferry_controller", "ferry_admin"):
        bad = closure(graph, plane) & {"ferry_replica", "ferry_runtimes"}
        if bad:
            problems.append(f"CMakeLists.txt: {plane} links {sorted(bad)}: the control plane must not link the "
                            "replica host or the runtimes")
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layering problem(s)")
        return 1
    print(f"layers: {sum(len(v) for v in actual.values())} component dependencies, all as docs/architecture.md says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
