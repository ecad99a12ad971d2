"""Rival anomaly-detection methods (PatchCore, WinCLIP) as plain model cores beside FE-CLIP."""
