"""The package's layout: floors that import only downward, no import cycles, a light `Callback`,
a docstring atop every module, and modules short enough to read (imports read by AST: nothing
is run)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Lowest first: a module may import its own floor and those below it, never one above.
FLOORS = (
    "core",  # errors, InputSpec, atomic writes, the checkpoint file, seeds, device, checks
    "distributed",  # the world and its process group, collectives, SyncBatchNorm, launcher
    "metrics",  # pure tensor functions of an evaluation's outputs
    "data",  # sources, decoding and caches, splits, loaders, augmentation
    "models",  # the registry and the networks
    "reporting",  # console, bars, metrics files, layer table, plots, report, sweep table
    "training",  # precision, EMA, the step, evaluation, the loop, callbacks, resume, optim
    "loggers",  # trackers: callbacks that send a run to TensorBoard or MLflow
    "config",  # composing and checking a config, resolvers, a resumed run's config
    "train",  # train(cfg): wiring only
    "trained",  # a trained run used: load, eval, predict, export, explain
    "audit",  # cnntrain-audit: duplicates, file problems, label issues from fold models
    "sweeps",  # a sweep job's share of the machine, pruning, the multirun callback
    "cli",  # the console scripts
)
# Public paths kept for users and saved configs: they re-export, and nothing inside imports them.
FACES = {"cnntrain.callbacks": "training"}
TOP = {"cnntrain", "cnntrain.__main__"}  # the package itself and `python -m cnntrain`
LONG_MODULES = {"cnntrain/reporting/plots.py", "cnntrain/reporting/report.py"}  # figures, HTML
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the package and of cnntrain's Hydra plugin, by dotted name."""
    files = [*(REPO / "cnntrain").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")]
    return {module_name(p): p for p in sorted(files)}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` imports, anywhere in it (lazily too);
    `from a.b import c` counts as a.b.c when that is a module, else as a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: imported(name, path, set(modules)) for name, path in modules.items()}


def floor(module: str) -> int:
    """The floor index of a module: its package under cnntrain, the cli's for what runs it."""
    if module.startswith("hydra_plugins."):
        return len(FLOORS)  # a plugin of Hydra's, above the command that starts it
    if module in TOP:
        return len(FLOORS) - 1
    if module in FACES:
        return FLOORS.index(FACES[module])
    return FLOORS.index(module.split(".")[1])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'A -> B (floor a below floor b)' for each import of a higher floor, or of a face."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target in FACES and module not in TOP:
                wrong.append(f"{module} -> {target} (a public face: import {FACES[target]}/)")
            elif floor(module) < floor(target):
                wrong.append(f"{module} -> {target} (floor {module.split('.')[1]!r} is below "
                             f"{target.split('.')[1]!r})")  # fmt: skip
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph` (Tarjan's strongly connected components of more than one
    module, or a module importing itself)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_on_a_known_floor():
    for module in sources():
        floor(module)  # raises ValueError for a package the floors do not name


def test_no_module_imports_a_floor_above_its_own():
    assert upward_imports(import_graph()) == []


def test_no_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_rules_name_an_upward_import_a_face_and_a_cycle():
    upward = import_graph() | {"cnntrain.core.errors": {"cnntrain.training.loop"}}
    assert upward_imports(upward) == [
        "cnntrain.core.errors -> cnntrain.training.loop (floor 'core' is below 'training')"
    ]
    face = import_graph() | {"cnntrain.loggers.params": {"cnntrain.callbacks"}}
    assert upward_imports(face) == [
        "cnntrain.loggers.params -> cnntrain.callbacks (a public face: import training/)"
    ]
    kernels = import_graph()["cnntrain.data.augment.kernels"]
    looped = import_graph() | {
        "cnntrain.data.augment.kernels": {*kernels, "cnntrain.data.augment.batch"}
    }
    (cycle,) = cycles(looped)  # batch imports kernels, directly and through policies
    assert cycle == [f"cnntrain.data.augment.{m}" for m in ("batch", "kernels", "policies")]


def test_a_callback_module_loads_only_the_callback_base():
    code = (
        "import sys; from cnntrain.callbacks import Callback; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cnntrain'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    loaded = ast.literal_eval(proc.stdout)  # the printed list of names
    assert loaded == ["cnntrain", "cnntrain.callbacks", "cnntrain.training",
                      "cnntrain.training.events"]  # fmt: skip


@pytest.mark.parametrize("module", sorted(sources()))
def test_every_module_opens_with_a_docstring_of_its_job(module):
    docstring = ast.get_docstring(ast.parse(sources()[module].read_text()))
    assert docstring and docstring.strip(), f"{module} has no docstring"


def test_no_module_is_longer_than_a_few_screens():
    long = {
        str(path.relative_to(REPO)): n
        for path in sources().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= LONG_MODULES, long
