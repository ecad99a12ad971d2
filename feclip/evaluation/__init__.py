"""Evaluation: inference over image sets (inference.py), metrics (metrics/), calibrated thresholds
(calibration.py), figures (plots.py, figures.py) and applying a saved model to new files (predictor.py)."""
