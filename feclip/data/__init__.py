"""HDMAP and benchmark data: loading, synthetic generation, fault injection, model-input transforms."""
