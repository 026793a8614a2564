"""The layers of docs/design.md hold: walking every import of every module of the package.

1. the foundation (af2cpu's errors, config, io, layout, formats, summary, plots, databases, data, common,
   runtime) imports no stage and nothing above;
2. each stage (preprocessing, model, relax) imports the foundation and itself only;
3. the orchestration (scheduler) imports the foundation and the stages;
4. the top (the commands, benchmarks, the notebook and Python APIs) imports anything.

Imports inside functions count too, and each must say why it is deferred (an optional dependency or
start-up time): a ``# deferred:`` comment on its line or on the block of imports and comments just above.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("af2cpu.preprocessing", "af2cpu.model", "af2cpu.relax")
ORCHESTRATION = "af2cpu.scheduler"
TOP = ("af2cpu.cli", "af2cpu.bench", "af2cpu.results", "af2cpu.__main__")


def _package_dirs() -> dict[str, Path]:
    """pyproject.toml's [tool.setuptools.package-dir]: package -> folder (tomllib needs Python 3.11)."""
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return {package: ROOT / folder for package, folder in re.findall(r'^"([\w.]+)" = "([\w./]+)"', section, re.MULTILINE)}


def _modules() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> source file."""
    dirs = _package_dirs()
    modules = {}
    for package, folder in dirs.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[0] in {Path(d).name for p, d in dirs.items() if p != package and p.startswith(package + ".")}:
                continue  # a subpackage mapped from its own folder
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def layer(module: str) -> str:
    if module == "af2cpu" or module.startswith(TOP):
        return "top"  # af2cpu/__init__.py is the Python API
    if module.startswith(ORCHESTRATION):
        return "orchestration"
    for stage in STAGES:
        if module == stage or module.startswith(stage + "."):
            return stage
    return "foundation"


def allowed(importer: str, imported: str) -> bool:
    """Whether a module of ``importer``'s layer may import ``imported``."""
    source, target = layer(importer), layer(imported)
    if source == "top" or target == "foundation":
        return True
    if source == "orchestration":
        return target in (*STAGES, "orchestration")
    return source == target  # a stage imports itself; the foundation nothing above it


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported af2cpu module, line, inside a function) of every import statement of the file."""
    tree = ast.parse(path.read_text())
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from af2cpu import formats` imports the module af2cpu.formats.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) in in_function) for name in dict.fromkeys(names)]
    return found


def test_every_package_folder_is_walked():
    assert {"af2cpu.config", "af2cpu.layout", "af2cpu.model.alphafold", "af2cpu.scheduler.stages",
            "af2cpu.preprocessing.searches", "af2cpu.relax.protocol", "af2cpu.cli.predict"} <= set(MODULES)
    assert layer("af2cpu.runtime.threads") == "foundation" and layer("af2cpu.model.memory") == "af2cpu.model"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    bad = [f"line {line}: {name} ({layer(name)})" for name, line, _ in imports(MODULES[module])
           if name.startswith("af2cpu.") and not allowed(module, name)]
    assert not bad, f"{module} ({layer(module)}) imports above its layer or across stages: {bad}"


def explained(lines: list[str], line: int) -> bool:
    """Whether the import on (1-based) ``line`` or the imports and comments right above it say why."""
    index = line - 1
    while index >= 0:
        text = lines[index].strip()
        if "# deferred:" in text:
            return True
        if index < line - 1 and not (text.startswith(("import ", "from ", "#")) or text == ""):
            return False
        index -= 1
    return False


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_inside_functions_say_why(module):
    lines = MODULES[module].read_text().splitlines()
    unexplained = [f"line {line}: {lines[line - 1].strip()}" for _, line, inside in imports(MODULES[module])
                   if inside and not explained(lines, line)]
    assert not unexplained, f"{module}: imports inside functions without a '# deferred:' reason: {unexplained}"


def test_the_layering_check_catches_a_stage_importing_the_scheduler():
    assert not allowed("af2cpu.preprocessing.searches", "af2cpu.scheduler.cache")
    assert not allowed("af2cpu.model.weights", "af2cpu.preprocessing.inputs")
    assert not allowed("af2cpu.layout", "af2cpu.model.presets")
    assert allowed("af2cpu.scheduler.stages", "af2cpu.model.memory") and allowed("af2cpu.cli.bench", "af2cpu.bench")


def defined_names(path: Path) -> set[str]:
    """The names a module's top level binds: definitions, assignments, imports (anything a caller can import)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = [node]
        if isinstance(node, (ast.If, ast.Try)):  # bindings under a top-level condition or try
            targets = [n for n in ast.walk(node) if isinstance(n, ast.stmt)]
        for n in targets:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in n.names}
            elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                    names |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
    return names


SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for folder in ("benchmarks", "scripts")
                 for p in (ROOT / folder).rglob("*.py"))


def missing_imports(path: Path) -> list[str]:
    """Names ``path`` imports from af2cpu that the module does not define: a script left behind by a move."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "af2cpu"):
            continue
        if node.module not in MODULES:
            missing.append(f"line {node.lineno}: no module {node.module}")
            continue
        defined = defined_names(MODULES[node.module])
        missing += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names
                    if a.name != "*" and a.name not in defined and f"{node.module}.{a.name}" not in MODULES]
    return missing


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmarks_and_scripts_import_names_that_exist(script):
    missing = missing_imports(ROOT / script)
    assert not missing, f"{script} imports what af2cpu no longer has: {missing}"


def test_the_import_check_catches_a_moved_name(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("from af2cpu.bench.machine import interleaved_times, gemm_peak\nfrom af2cpu.gone import x\n")
    assert missing_imports(script) == ["line 1: af2cpu.bench.machine.interleaved_times", "line 2: no module af2cpu.gone"]
    assert "interleaved_times" in defined_names(MODULES["af2cpu.runtime.precision"])
