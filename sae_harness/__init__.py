"""The plumbing behind experiment.py: data and the activation cache (data), the fast orthogonality
term (ortho_fast), SAEBench evals (evals), the run directory (rundir), final_info's schema
(schema), notes.txt (notes), the command line (cli) and wandb (tracking). Changing the method
never requires reading it."""
