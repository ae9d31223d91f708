"""What the layout promises (docs/architecture.md): outside tunelab/tasks/ no code asks which task it runs (no
comparison with a task name or a SQuAD version), and the package imports without cycles between its parts."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"
NAMES = {"sst2", "squad", "squad_v2", "sst-2", "1.1", "2.0", "v1.1", "v2.0"}


def _constants(node: ast.AST) -> list[str]:
    """The string constants a node is or holds (a tuple/list/set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for elt in node.elts for v in _constants(elt)]
    return []


def task_name_branches(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every place that compares with a task name or version, looks one up as a dict key or
    subscript, or tests a string's start or end against one."""
    found = []
    for node in ast.walk(tree):
        values: list[str] = []
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values += _constants(operand)
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                values += _constants(key) if key is not None else []
        elif isinstance(node, ast.Subscript):
            values += _constants(node.slice)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith", "get", "index", "count")
        ):
            for arg in node.args:
                values += _constants(arg)
        elif isinstance(node, ast.MatchValue):
            values += _constants(node.value)
        found += [(node.lineno, v) for v in values if v.lower() in NAMES]
    return found


def test_the_checker_finds_the_branches_it_is_meant_to():
    code = """
if task == "sst2": pass
if "squad" in name: pass
if version == "2.0": pass
x = {"sst2": 1}
y = cfg["tasks"]["squad_v2"]
z = name.startswith("squad")
w = task in ("sst2", "other")
ok = {"kind": "classification"}
"""
    lines = sorted({line for line, _ in task_name_branches(ast.parse(code))})
    assert lines == [2, 3, 4, 5, 6, 7, 8]


def test_no_task_name_branches_outside_tasks():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "tasks":
            continue
        for line, value in task_name_branches(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{rel}:{line}: {value!r}")
    assert not offenders, "task-name branches outside tunelab/tasks/:\n" + "\n".join(offenders)


def test_models_and_data_do_not_import_tasks_or_commands():
    """The lower layers (models, data, training, options, outputs) know nothing of tasks, runs or the CLI."""
    lower = (
        "models",
        "data",
        "training",
        "options.py",
        "outputs.py",
        "distributed.py",
        "errors.py",
        "signals.py",
    )
    upper = ("tunelab.tasks", "tunelab.runs", "tunelab.cli", "tunelab.study", "tunelab.report", "tunelab.hub")
    offenders = []
    for part in lower:
        for path in [SRC / part] if part.endswith(".py") else sorted((SRC / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [f"{path.relative_to(SRC)} imports {n}" for n in names if n.startswith(upper)]
    assert not offenders, offenders


def _module(path: Path) -> str:
    return ".".join(("tunelab", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def _imports(path: Path, every: bool, modules: set[str]) -> set[str]:
    """The tunelab modules a module imports: at its top level, or (every) anywhere in it. `from P import M`
    imports the module P.M when there is one, else P."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if every else tree.body
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tunelab")}
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunelab") and not node.level
        ):
            out |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            }
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n in graph and not state.get(n) and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if not state.get(m) and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    """Modules import each other in one direction at their top level; within tunelab.models not even inside
    functions (the registry and the loaders once imported each other)."""
    paths = {_module(p): p for p in SRC.rglob("*.py") if p.name != "__main__.py"}
    graph = {
        m: {n for n in _imports(p, False, set(paths)) if n in paths and n != m} for m, p in paths.items()
    }
    assert _cycle(graph) is None, _cycle(graph)
    models = {m: p for m, p in paths.items() if m.startswith("tunelab.models")}
    graph = {
        m: {n for n in _imports(p, True, set(paths)) if n in models and n != m} for m, p in models.items()
    }
    assert _cycle(graph) is None, _cycle(graph)


def test_the_command_line_parser_imports_no_torch():
    """`tunelab --help` (and every parse of the command line) answers at once: torch, transformers and the
    study's stages (which import them, 3 s) are imported only by the commands that use them."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tunelab.cli import build_parser\n"
        "assert 'usage: tunelab' in build_parser().format_help()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tunelab.study.run') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_task_kinds_import_no_scikit_learn():
    """Reading a task (`data check`, an SST-2 run) does not import scikit-learn (~1 s): the extractive-QA kind
    takes its stop words from it only when it first compares words."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tunelab.tasks import get_task\n"
        "get_task('squad'), get_task('sst2')\n"
        "print('sklearn' in sys.modules)\n"
        "from tunelab.tasks.extractive_qa.question_words import content_words\n"
        "print(sorted(content_words('Where is the Halley Station?')), 'sklearn' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["False", "['halley', 'station'] True"]
