"""The plan of the house, drawn from the imports: `python scripts/architecture.py [--rev REV] --out PNG`.

Every `import` of shards/, dinotrain/ and launch/ (also the ones inside functions: the lazy imports
are arrows too) is read with `ast`; a module stands for its folder (`dinotrain/models/vit.py` is
`dinotrain.models`), a module at the top of a package for itself (`dinotrain.run_layout`), so that an
arrow between folders, or a loop through a top module, shows. tests/test_architecture.py asserts the
floors with the same functions (ALLOWED) and that no loop runs between dinotrain's folders.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("shards", "dinotrain", "launch")  # ground up
# what each floor may import: shards and the library know nothing of each other or of orchestration
ALLOWED = {"shards": {"shards"}, "dinotrain": {"dinotrain"}, "launch": set(FLOORS)}


def _modules(root: Path) -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every .py under the floors' folders (a package's __init__ is the package)."""
    for floor in FLOORS:
        for path in sorted((root / floor).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _imported(tree: ast.AST, name: str, is_package: bool) -> Iterator[str]:
    """Dotted names a module imports, anywhere in its body (relative imports resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)  # `from pkg import module`


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (names that are not a module of the tree are dropped)."""
    files = dict(_modules(root))
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        found = set(_imported(tree, name, path.name == "__init__.py"))
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def node(module: str, top: set[str]) -> str:
    """The folder a module stands for: `a.b.c` -> `a.b` when `a.b` is a package; a top module stays itself."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in top:
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if len(parts) >= 2 else parts[0]


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between folders (see `node`); arrows inside one folder are left out."""
    packages = {m for m in graph if any(o.startswith(m + ".") for o in graph)}
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        a = node(m, packages)
        out.setdefault(a, set())
        out[a] |= {node(d, packages) for d in deps} - {a}
    return out


def forbidden_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs that cross floors against ALLOWED (dinotrain -> launch or shards, ...)."""
    return sorted((m, d) for m, deps in graph.items() for d in deps
                  if d.split(".")[0] not in ALLOWED[m.split(".")[0]])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The loops of a graph: its strongly connected components of two or more nodes (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on.add(w)
                work.append((w, iter(sorted(graph.get(w, ())))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return sorted(found)


# ----------------------------------------------------------------------------- the picture
JOBS = {"launch", "cli", "executor", "submit", "task", "queue", "probe", "runstate", "status", "jobs"}
SWEEPS = {"sweep", "sweep_cli", "sweep_run", "report", "scaling", "sweeps"}


def picture_node(module: str) -> str:
    """Coarser boxes for the drawing: shards as one box, launch's top modules by what they do."""
    parts = module.split(".")
    if parts[0] == "shards":
        return "shards"
    if parts[0] == "launch":
        top = parts[1] if len(parts) > 1 else "launch"
        if top in JOBS:
            return "launch: jobs"
        if top in SWEEPS:
            return "launch: sweeps"
        return "launch: study" if top.startswith(("study", "gpu_study")) else f"launch.{top}"
    return module


def picture_graph(folders: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in folders.items():
        a = picture_node(m)
        out.setdefault(a, set())
        out[a] |= {picture_node(d) for d in deps} - {a}
    return out


def _rows(nodes: list[str], folders: set[str]) -> dict[str, tuple[float, float]]:
    """Box centres: launch on top, dinotrain's folders, its top modules, shards at the bottom."""
    library = [n for n in nodes if n.split(".")[0] == "dinotrain"]
    rows = [[n for n in nodes if n.startswith("launch")], [n for n in library if n in folders],
            [n for n in library if n not in folders], [n for n in nodes if n.startswith("shards")]]
    pos = {}
    for y, row in zip((3.0, 2.0, 1.1, 0.0), rows):
        for i, n in enumerate(sorted(row)):
            pos[n] = ((i + 0.5) / len(row), y)
    return pos


def draw(root: Path, out: Path, title: str) -> None:
    """The folder graph of the tree at `root` as a PNG: arrows point at what is imported, in the
    importer's floor colour; red ones break the plan (a forbidden floor, or part of a loop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    folders = folder_graph(import_graph(root))
    pic = picture_graph(folders)
    bad = {(picture_node(a), picture_node(b)) for a, b in forbidden_arrows(folders)}
    for loop in cycles(folders):
        bad |= {(picture_node(a), picture_node(b)) for a in loop for b in loop if b in folders[a]}
    sub = {f"dinotrain.{p.name}" for p in (root / "dinotrain").iterdir() if (p / "__init__.py").is_file()}
    pos = _rows(sorted(pic), sub)
    fig, ax = plt.subplots(figsize=(15, 7.5))
    for a, deps in sorted(pic.items()):
        for b in sorted(deps):
            red = (a, b) in bad
            ax.add_patch(FancyArrowPatch(pos[a], pos[b], arrowstyle="-|>", mutation_scale=10, shrinkA=14,
                                         shrinkB=14, connectionstyle="arc3,rad=0.08", lw=2.2 if red else 0.7,
                                         color="crimson" if red else _EDGE[a.split(".")[0].split(":")[0]], zorder=3 if red else 1))
    for n, (x, y) in pos.items():
        ax.text(x, y, _label(n, sub | {"launch.demo"}), ha="center", va="center",
                fontsize=8.5, zorder=4, bbox={"boxstyle": "round", "fc": _colour(n), "ec": "0.3"})
    for y, label in ((3.0, "launch\n(orchestration)"), (1.55, "dinotrain\n(library)"), (0.0, "shards\n(ground)")):
        ax.text(-0.06, y, label, ha="right", va="center", fontsize=10, weight="bold")
    ax.set_xlim(-0.2, 1.02)
    ax.set_ylim(-0.4, 3.4)
    ax.axis("off")
    ax.set_title(f"{title}: {len(bad)} arrow(s) against the plan (red)", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _label(n: str, folders: set[str]) -> str:
    """Folders end in /, modules at dinotrain's top are named alone (their folder is the row)."""
    if n == "dinotrain":
        return "__init__"
    return n.replace("dinotrain.", "").replace("launch.", "launch/") + ("/" if n in folders else "")


_EDGE = {"shards": "0.5", "dinotrain": "#6f8fb0", "launch": "#e0a060"}  # an arrow has its importer's floor colour


def _colour(n: str) -> str:
    return {"shards": "#d9ead3", "dinotrain": "#cfe2f3", "launch": "#fce5cd"}[n.split(".")[0].split(":")[0]]


def _tree_at(rev: str, into: Path) -> Path:
    """The floors' folders of a git revision, unpacked under `into`."""
    tar = into / "tree.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(tar), rev, *FLOORS], check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "tree", filter="data")
    return into / "tree"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", help="a git revision to draw (default: the working tree)")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = _tree_at(args.rev, Path(tmp)) if args.rev else REPO
        draw(root, args.out, args.title or (f"imports at {args.rev}" if args.rev else "imports of the working tree"))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
