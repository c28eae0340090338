"""What a run needs: the command line and option checks, text, models and the activation cache,
synthetic worlds, precision, the run directory and its schema, the training session, the fast
orthogonality term, and the runner that takes a run's seeds from cache to report."""
