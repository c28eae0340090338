"""The plumbing behind experiment.py, in three rooms:

- run/: what a run needs: the config's command line and checks, data and the activation cache,
  the synthetic worlds, precision, the run directory, the training session, the fast
  orthogonality term and the runner that takes a run from cache to report;
- evals/: what a finished SAE is measured with: the eval registry, SAEBench's evals, the eval
  cache, held-out separation and the ground-truth measures on synthetic worlds;
- analysis/: what runs mean together: run records, statistics, readings of a study, reports,
  notes.txt entries.

Changing the method never requires reading it."""
