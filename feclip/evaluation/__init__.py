"""Evaluation: inference over image sets (inference.py), metrics (metrics/), calibrated thresholds
(calibration.py), figures (plots.py, figures.py), applying a saved model to new files (predictor.py), and
decidable comparisons: intervals and tests (stats.py) and comparison tables of score tables (compare.py)."""
