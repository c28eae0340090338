"""Weights & Biases logging, off unless --wandb_project is given. It logs what training_log.jsonl
holds, the summary and the figures. It never blocks or fails a run: any wandb problem (not
installed, not logged in, unreachable) is one warning line, and the run goes on without it.
WANDB_MODE=offline writes the run under run_i/wandb for a later `wandb sync`."""

import os


class Tracker:
    def __init__(self, project: str, name: str, config: dict, out_dir):
        self.run = None
        if not project:
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=project,
                name=name,
                config=config,
                dir=str(out_dir),
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=30, console="off"),
            )
            print(f"wandb: logging to project {project} ({self.run.settings.mode} mode)")
        except BaseException as e:  # wandb can raise its own errors, or exit on a login prompt
            if isinstance(e, KeyboardInterrupt):
                raise
            self._warn(e)

    def _warn(self, e: BaseException) -> None:
        lines = str(e).strip().splitlines()
        print(
            f"warning: wandb is off for this run ({type(e).__name__}: {lines[0] if lines else ''}); results still go to the run directory"
        )
        self.run = None

    def _call(self, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._warn(e)

    def log(self, record: dict) -> None:
        self._call(lambda: self.run.log({k: v for k, v in record.items() if v is not None}, step=record["step"]))

    def summary(self, summary: dict) -> None:
        """Headline metrics ({name: {"value", ...}}) into the run's summary."""
        self._call(lambda: self.run.summary.update({f"eval/{k}": v["value"] for k, v in summary.items() if v.get("value") is not None}))

    def images(self, paths) -> None:
        def log_images():
            import wandb

            self.run.log({f"plots/{os.path.splitext(os.path.basename(p))[0]}": wandb.Image(str(p)) for p in paths})

        self._call(log_images)

    def finish(self) -> None:
        self._call(lambda: self.run.finish())
        self.run = None
