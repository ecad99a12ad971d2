"""Hyperparameter search as a Hydra sweeper (`feclip run -m search=<space>`, hydra/sweeper=search): Optuna
trials over a space in `feclip/conf/search/`, selected on a dev-part metric, resumable from the study on disk
(`<search.dir>/study.db`), claimed on the test part by its confirm stage (`search.stage=confirm`).

space.py (the space, samplers, aggregates, objectives), plan.py (the checks before any work), study.py (the
study on disk, the lock, the best trial), trials.py (a trial's objective from its job folders), sweeper.py
(the loop), record.py (trials table, best trial, figures, the parent run). The Hydra plugin that Hydra
discovers is `hydra_plugins/feclip_search`.
"""
