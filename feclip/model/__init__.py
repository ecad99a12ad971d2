"""FE-CLIP model half: frozen open_clip backbone, frequency transforms, adapters, head, prompts, losses,
checkpoints. Import the submodules directly (e.g. `from feclip.model.feclip import FEClip`)."""
