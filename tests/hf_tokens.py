"""Greedy AVC / VCD / M3ID tokens and AVC's blind tokens of a llava-hf checkpoint on saved inputs,
printed as one JSON line: run by tests/test_cross_backend.py under ANOTHER profile's interpreter
(transformers 5.x) to compare with the original backend on the same weights.

    python tests/hf_tokens.py CHECKPOINT_DIR INPUTS.pt NEW_TOKENS
"""

import json
import sys
import warnings

import torch
import transformers

import llava_avc
from llava_avc import AVCConfig, M3IDConfig, VCDConfig

CONFIGS = {"avc": AVCConfig(), "vcd": VCDConfig(), "m3id": M3IDConfig(lam=0.5), "none-avc": AVCConfig(alpha=0.0)}


def main(checkpoint: str, inputs_file: str, new_tokens: int) -> None:
    inputs = torch.load(inputs_file)
    model_class = getattr(transformers, inputs.pop("model_class"))
    model = model_class.from_pretrained(checkpoint, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    result = {"transformers": transformers.__version__, "tokens": {}, "blind": None}
    for name, config in CONFIGS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alpha=0 is a no-op on purpose
            output = llava_avc.generate(model, **inputs, **{config.method: config}, do_sample=False,
                                        max_new_tokens=new_tokens, suppress_tokens=[eos], return_dict_in_generate=True)
        result["tokens"][name] = output.sequences[:, inputs["input_ids"].shape[1]:].tolist()
        if name == "avc":
            result["blind"] = [record.to_dict() for record in output.blind_tokens]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
