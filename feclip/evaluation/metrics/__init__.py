"""Evaluation metrics: the HDMAP protocols (docs/data.md §8), the paper's benchmark metrics, gate accuracy.

Conventions shared by every function here:
- Higher score = more anomalous; label 1 = fault (anomalous), 0 = good. Masks are {0, 1} per pixel.
- Every rate (AUROC, AP, accuracy, F1, TPR, PRO) is a fraction in [0, 1]; reports multiply by 100.
- Inputs may be numpy arrays, lists or torch tensors (any device; float16/bfloat16 maps become float32).
- A metric that is undefined on its subset (one class only, or no rows) is NaN, and `warnings.warn` names the
  subset and the metric; it never raises. Bad input (mismatched lengths, labels outside {0, 1}, unknown
  conditions, non-finite scores) raises `MetricsError` (a ValueError) with a one-line message.

Definitions (n_f faults, n_g goods; "predict fault at t" means score >= t unless stated otherwise):
- AUROC = P(s_fault > s_good) + 1/2 P(s_fault == s_good) over all fault/good pairs (Mann-Whitney), which is
  sklearn's trapezoidal ROC area with ties as one threshold (average rank). Exact integer counts.
- AP = sum over distinct thresholds t (descending) of (R(t) - R(t_prev)) * P(t): sklearn's step-wise average
  precision, ties as one threshold.
- f1_max = max over distinct thresholds t of F1 = 2 TP / (2 TP + FP + FN): an ORACLE (the threshold is
  chosen on the test labels), reported as such.
- tpr_at_fpr1 = max TPR over the ROC operating points (distinct thresholds plus "nothing is a fault") whose
  FPR = FP / n_g <= 0.01; no interpolation between points (with 1000 goods: at most 10 false alarms).
- acc_oracle (the user's PatchCore protocol, docs/rivals.md 2.1): candidates t = the 0th, 1st, ..., 100th
  percentiles (numpy linear interpolation) of the test scores; fault iff score >= t; keep the first candidate
  with the best overall accuracy (`thr_oracle`); `_cold` / `_warm` apply that same threshold to the subsets.
  It sees the test labels: optimistic, always reported as oracle. (The top candidate is the max score, so
  at least one image is always flagged, exactly as in the user's script.)
- acc_val: thr_val = the `val_percentile` percentile (numpy linear) of held-out normal scores; fault iff
  score > thr_val (strict: at the 99th percentile about 1% of held-out normals are flagged).

Implementation note: the metrics are computed here in numpy rather than with torchmetrics, because
torchmetrics' binary functional API applies a sigmoid to scores outside [0, 1] (raw distances or logits then
saturate in float32 into false ties: AUROC 0.5 for scores 20..23) and accumulates counts in float32.
"""

from feclip.evaluation.metrics.benchmark import BENCHMARK_METRICS, benchmark_metrics
from feclip.evaluation.metrics.checks import CONDITIONS, MetricsError, MetricWarning
from feclip.evaluation.metrics.gating import gate_accuracy
from feclip.evaluation.metrics.image import auroc, hdmap_metrics, roc_curve
from feclip.evaluation.metrics.pixel import pixel_auroc, pro_score

__all__ = [
    "BENCHMARK_METRICS",
    "CONDITIONS",
    "MetricWarning",
    "MetricsError",
    "auroc",
    "benchmark_metrics",
    "gate_accuracy",
    "hdmap_metrics",
    "pixel_auroc",
    "pro_score",
    "roc_curve",
]
