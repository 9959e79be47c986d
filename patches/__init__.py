"""The only code that reaches into LLaVA / transformers internals (installed as llava_avc.patches)."""
