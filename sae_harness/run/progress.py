"""Progress a person and a job scheduler can both read: on a terminal a tqdm bar that redraws in
place; anywhere else (a log file, a submitit or SLURM job log) no bar, one plain line per update:

    training step 120/3072: loss 31.2, recon 30.9, auxk 0.41, ortho 0.52, l0 13.0, dead 0.000, 12.3 s
"""

import contextlib
import io
import sys
import time


def interactive() -> bool:
    return sys.stdout.isatty()


class Progress:
    """Counts done of total; update(done, **fields) moves the bar (terminal) or prints one line (else)."""

    def __init__(self, desc: str, total: int, initial: int = 0, unit: str = "", unit_scale: bool = False):
        self.desc, self.total, self.unit, self.t0 = desc, total, unit, time.time()
        self.bar = None
        if interactive():
            from tqdm import tqdm

            bar_unit = unit or "it"
            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=bar_unit, unit_scale=unit_scale, file=sys.stdout, dynamic_ncols=True
            )

    def update(self, done: int, **fields) -> None:
        """done of total so far. With fields (name: value as shown): the bar shows them, or, off a
        terminal, one line is printed; without, only the bar moves."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if fields:
                self.bar.set_postfix(fields, refresh=False)
        elif fields:
            shown = ", ".join([f"{k} {v}" for k, v in fields.items()] + [f"{time.time() - self.t0:.1f} s"])
            print(f"{self.desc} {done}/{self.total}{' ' + self.unit if self.unit else ''}: {shown}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def record_fields(record: dict, terms) -> dict:
    """A training-log record as the progress bar or line shows it: the loss, each term that is on
    (terms: the step's term names; the record holds <name>_loss), L0 and the dead fraction."""
    shown = {name: record[f"{name}_loss"] for name in terms if record.get(f"{name}_loss")}
    return (
        dict(loss=f"{record['loss']:.4g}")
        | {name: f"{v:.4g}" for name, v in shown.items()}
        | dict(l0=f"{record['l0']:.1f}", dead=f"{record['dead_fraction']:.3f}")
    )


@contextlib.contextmanager
def library_bars_quiet():
    """A library's own progress bars (on stderr, with no switch to turn them off) kept out of a log:
    on a terminal they show; elsewhere their redraws are dropped."""
    if interactive():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
