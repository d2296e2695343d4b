"""The layers point one way (DESIGN.md): cli -> cluster -> frontend -> workers -> kv_transfer ->
engine -> kernels, with `scheduler` beside them importing none of them. Every import is
read from the source, those inside functions too, so a cycle cannot hide in one."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDER = [
    "runtime.cli",
    "runtime.serve_cli",
    "runtime.plan_cli",
    "runtime.calibrate",
    "runtime.cluster",
    "runtime.frontend",
    "runtime.workers",
    "runtime.kv_transfer",
    "runtime.faults",
    "runtime.engine",
    "runtime.model_store",
    "runtime.config",
    "kernels",
]
# Beside the chain, usable from it, each importing only what is listed: the scheduler's
# policies, the client SDK, the generated API stubs, and logs and traces.
BESIDE = {
    "scheduler": set(),
    "runtime.client": {"runtime.api"},
    "runtime.api": set(),
    "runtime.observability": set(),
}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("runtime", "scheduler", "kernels"):
        for path in (REPO / top).rglob("*.py"):
            if "_proto" in path.parts:
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in out if n.split(".")[0] in ("runtime", "scheduler", "kernels")}


def group(name: str) -> str | None:
    for g in sorted([*ORDER, *BESIDE], key=len, reverse=True):
        if name == g or name.startswith(g + "."):
            return g
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports(p) if i in mods} for m, p in mods.items()}


def test_no_import_points_up_the_layers_or_out_of_scheduler():
    wrong = []
    for mod, targets in graph().items():
        g = group(mod)
        for t in targets:
            h = group(t)
            if g == h or g is None or h is None:
                continue
            if g in BESIDE:
                ok = h in BESIDE[g]
            else:
                ok = h in BESIDE or ORDER.index(h) > ORDER.index(g)
            if not ok:
                wrong.append(f"{mod} -> {t}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = graph()
    seen, on_path, cycles = set(), [], []

    def visit(m):
        if m in on_path:
            cycles.append(" -> ".join(on_path[on_path.index(m) :] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        on_path.append(m)
        for t in sorted(g.get(m, ())):
            visit(t)
        on_path.pop()

    for m in sorted(g):
        visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_scheduler_imports_no_torch_and_nothing_of_the_runtime():
    for path in (REPO / "scheduler").rglob("*.py"):
        heavy = {i for i in imports(path) if not i.startswith("scheduler")}
        text = path.read_text()
        assert not heavy and "import torch" not in text and "import ray" not in text, path
