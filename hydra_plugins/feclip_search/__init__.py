"""feclip hyperparameter search as a Hydra sweeper plugin (see search_sweeper.py)."""
