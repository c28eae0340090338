"""The layout's promises: plotting never loads the training stack, and the package never imports
experiment.py (no cycle: experiment.py imports the package, plot.py imports neither)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    return set(proc.stdout.split())


def test_plot_imports_neither_torch_nor_experiment():
    modules = imported_after("import plot")
    assert "torch" not in modules and "experiment" not in modules and "sae_bench" not in modules


def test_schema_and_notes_are_pure_python():
    modules = imported_after("import sae_harness.schema, sae_harness.notes")
    assert "torch" not in modules and "numpy" not in modules


def test_the_package_never_imports_experiment():
    for path in (ROOT / "sae_harness").glob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*(import experiment|from experiment import)\b", line), f"{path.name}: {line}"
