"""The reversible monkey-patches of the original LLaVA codebase, installed as `llava_avc.patches`.

`llava_patch`: `LlavaLlamaForCausalLM.generate` / `.forward` and LLaVA's loader (`patch_llava`).
`script_overrides`: what `llava-avc run` swaps for one unmodified script's lifetime (CUDA -> CPU,
the loader's device and quantization, a max_new_tokens cap).
Part of the original-LLaVA backend (`llava_avc.backends.llava`).
"""
