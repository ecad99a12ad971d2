"""Anomaly-detection methods behind one interface (`feclip.methods.base.Method`): FE-CLIP, PatchCore, WinCLIP.
The registry of the `method` config group is `feclip.methods.registry.METHODS`."""
