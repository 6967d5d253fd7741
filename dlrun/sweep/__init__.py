"""Hyperparameter sweeps: the sweep file (spec), its Optuna study (study), one trial's process
(worker) and the sweep folder's result files (results). The library entry points are
`dlrun.api.sweep` and `dlrun.api.resume_sweep`."""
