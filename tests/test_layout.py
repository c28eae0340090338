"""The layout's promises: plotting never loads the training stack, the package never imports
experiment.py (no cycle: experiment.py imports the package, plot.py imports neither), and README.md
stays a short page that links to the docs holding the detail."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    return set(proc.stdout.split())


def test_plot_imports_neither_torch_nor_experiment():
    modules = imported_after("import plot")
    assert "torch" not in modules and "experiment" not in modules and "sae_bench" not in modules


def test_schema_and_notes_are_pure_python():
    modules = imported_after("import sae_harness.run.schema, sae_harness.analysis.notes")
    assert "torch" not in modules and "numpy" not in modules


def test_the_package_never_imports_experiment_or_plot():
    """The package is plumbing under the scripts: experiment.py, plot.py and sweep.py import it,
    never the other way (plot.py's figures are drawn by running it)."""
    for path in (ROOT / "sae_harness").rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*(import (experiment|plot|sweep)|from (experiment|plot|sweep) import)\b", line), f"{path.name}: {line}"


def package_imports() -> dict[str, set[str]]:
    """{module: the sae_harness modules it imports, at its top or inside a function}."""
    graph = {}
    for path in (ROOT / "sae_harness").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sae_harness"):
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("sae_harness")}
        graph[name] = found
    return {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}


def test_no_import_cycle_in_the_package():
    """No module imports one that imports it back, even lazily (data.py and synth.py once did:
    the activation cache's reader now lives in buffer.py, which both import)."""
    graph = package_imports()

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


README_MAX_LINES = 250
DOCS = ("docs/method.md", "docs/evals.md", "docs/performance.md", "results/README.md")


def test_readme_stays_short_and_links_to_the_docs():
    """README.md is the user's page (at most 250 lines); the method, evals, performance and results
    detail lives in the docs it links to."""
    readme = (ROOT / "README.md").read_text()
    lines = len(readme.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail into docs/"
    links = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", readme))
    for doc in DOCS:
        assert (ROOT / doc).is_file(), f"{doc} is missing"
        assert doc in links, f"README.md does not link to {doc}"


@pytest.mark.slow
def test_bench_parses_its_modes_without_starting_work():
    """--help prints the modes and exits (it once started the 70-minute benchmark); a bad profile
    is one line, not a traceback."""
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench.py")]
    ok = subprocess.run([*bench, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0 and "--arms" in ok.stdout
    bad = subprocess.run([*bench, "--arms", "nope"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr
