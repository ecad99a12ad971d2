"""FE-CLIP as a method of the harness: the model (`feclip.model`), its adapter training loop (train.py) and
the method wrapper (method.py)."""
