"""A sweep's runs as records: one typed record per run (RunRecord), one reader and one writer of a
sweep's results JSON (results/<name>.json), and the records as a tidy table (one row per run, a
column per metric) that the comparisons pair and group.

    result = read_results("results/registered_cpu.json")
    records = runs_of(result)                       # [RunRecord, ...]
    table = frame(records, ["synth_absorption_any"])  # arm, variant, world, seed, synth_absorption_any

A record is written once, by a collect (run/planning.py run_records); everything else reads it through
RunRecord. A run of a sweep without a grid over worlds has the world its config recorded
(data_seed), so every comparison pairs by (world, seed). Pure Python but for pandas in frame()."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from sae_harness.run.rundir import UsageError, write_json_atomic
from sae_harness.run.schema import arm_over_worlds


class ResultsError(UsageError):
    """A results JSON that cannot be read: one line, exit status 2."""


def ok_value(entry: dict | None) -> float | None:
    """A summary entry's value where its status is ok, else None: the one rule for which numbers a
    comparison may use (a skipped, failed or missing metric is never a number)."""
    if not isinstance(entry, dict) or entry.get("status") != "ok":
        return None
    value = entry.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class RunRecord:
    """One run of a sweep as its results JSON records it."""

    arm: str
    """The arm's name: the variant, then each option it sets (progressive_ortho_lambda_max=0.15)."""
    variant: str
    """experiment.ARMS entry (none is plain TopK)."""
    seed: int
    """The SAE seed: initialisation and batch order, shared by the arms at that seed."""
    world: int | None = None
    """The text split or synthetic world (data_seed); runs are paired by (world, seed)."""
    overrides: dict = field(default_factory=dict)
    """The options the arm (and the sweep's grid) set beyond the sweep's own."""
    run_dir: str = ""
    state: str = "finished"
    config: dict = field(default_factory=dict)
    """The run's recorded training config."""
    summary: dict = field(default_factory=dict)
    """{metric: summary entry} (schema.SummaryEntry as JSON)."""
    dose: dict = field(default_factory=dict)
    """What the orthogonality term weighed over training (final_info's ortho_* numbers)."""
    seconds: float | None = None
    """Training seconds, on the machine cpu names."""
    cpu: str | None = None
    extra: dict = field(default_factory=dict)
    """Keys an older or newer writer recorded that this reader does not name; written back as they are."""

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        known.setdefault("variant", d.get("arm"))  # a record without one (a reading's hand-made input) names its arm by its variant
        if "world" not in known or known["world"] is None:
            known["world"] = (d.get("config") or {}).get("data_seed")
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return d | self.extra

    def value(self, metric: str) -> float | None:
        return ok_value(self.summary.get(metric))

    @property
    def arm_across_worlds(self) -> str:
        """The arm without its world: a sweep gridded over data_seed names each world's runs apart."""
        return arm_over_worlds({"variant": self.variant, "overrides": self.overrides})

    @property
    def unit(self) -> tuple:
        """What a comparison pairs by: (world, seed)."""
        return (self.world, self.seed)


def read_results(path) -> dict:
    """A sweep's results JSON (or a reading's), or ResultsError in one line."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}); restore it from git or rebuild it with python sweep.py --collect") from None
    if not isinstance(result, dict):
        raise ResultsError(f"{path} is not a results JSON (a JSON object is expected)")
    return result


def write_results(path, result: dict) -> Path:
    """The one writer of a results JSON: atomic, indented as the committed files are."""
    write_json_atomic(Path(path), result)
    return Path(path)


def runs_of(result: dict, arm: str | None = None) -> list[RunRecord]:
    """The result's run records (only arm's, when given: its name, or its name across worlds)."""
    runs = result.get("runs")
    if not isinstance(runs, list):
        raise ResultsError(f"{result.get('name', 'the results JSON')} has no per-run records")
    records = [RunRecord.from_json(r) for r in runs]
    return [r for r in records if arm is None or arm in (r.arm, r.arm_across_worlds)]


def read_runs(spec: str, root=".") -> list[RunRecord]:
    """The records of `path` (a results JSON, relative to root) or of one arm of it, `path#arm`."""
    path, _, arm = str(spec).partition("#")
    records = runs_of(read_results(Path(root) / path), arm or None)
    if arm and not records:
        raise ResultsError(f"{path} has no runs of arm {arm!r}")
    return records


def frame(records: list[RunRecord], metrics):
    """The records as a tidy table: a row per run, columns arm, variant, world, seed and one per
    metric (NaN where the metric is not ok)."""
    import pandas as pd

    rows = [dict(arm=r.arm, variant=r.variant, world=r.world, seed=r.seed) | {m: r.value(m) for m in metrics} for r in records]
    table = pd.DataFrame(rows, columns=["arm", "variant", "world", "seed", *metrics])
    return table.astype({m: float for m in metrics})
