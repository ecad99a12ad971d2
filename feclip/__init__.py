"""feclip: frequency-enhanced CLIP anomaly detection on gearbox HDMAP health maps."""
