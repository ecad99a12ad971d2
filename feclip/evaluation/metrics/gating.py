"""Cold/warm gate accuracy against the file-index truth, overall and per (label, condition) group."""

from __future__ import annotations

from feclip.evaluation.metrics.checks import condition_array, fraction, label_array


def gate_accuracy(pred, truth, labels) -> dict[str, float]:
    """Fraction of images whose gate decision equals the true condition, overall and per (label, condition).

    pred, truth: (N,) 'cold' | 'warm'; labels: (N,) 0 good / 1 fault. Keys: gate_acc, gate_acc_good_cold,
    gate_acc_good_warm, gate_acc_fault_cold, gate_acc_fault_warm (grouped by the true condition; NaN + warning
    for an empty group).
    """
    cold = condition_array(truth, "truth", None)
    correct = condition_array(pred, "pred", cold.size) == cold
    fault = label_array(labels, "labels", cold.size)
    metrics = {"gate_acc": fraction("all", correct)}
    for kind, of_kind in (("good", ~fault), ("fault", fault)):
        for condition, in_condition in (("cold", cold), ("warm", ~cold)):
            metrics[f"gate_acc_{kind}_{condition}"] = fraction(
                f"{kind}_{condition}", correct[of_kind & in_condition]
            )
    return metrics
