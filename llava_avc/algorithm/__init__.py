"""The method itself, as pure tensor code: configs, blind-token selection, contrast, diffusion noise.

Nothing here imports ``llava`` or ``transformers``; every function takes and returns tensors.
"""
