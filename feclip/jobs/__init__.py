"""Jobs: orchestration only. `run.main` validates the config and runs the job its `mode` and
`eval.protocol` name (registry.py): HDMAP train + evaluate (train_eval.py), the paper's benchmark protocol
(benchmark.py) or applying a saved model (predict.py), each inside one tracked MLflow run (common.py)."""
