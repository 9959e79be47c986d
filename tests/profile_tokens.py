"""Print, as JSON, the greedy tokens of a fixed tiny checkpoint under this interpreter's transformers.

Used by tests/test_profiles.py to compare the two supported transformers profiles:
    python tests/profile_tokens.py WORKDIR
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import transformers  # noqa: E402

import llava_avc  # noqa: E402
from helpers import LEAD, QUESTIONS, images_for, left_padded, no_eos, prompt_ids, variant_images  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.testing.tiny import load_tiny, make_tiny_llava, sample_image  # noqa: E402


def main(workdir: str) -> None:
    path = make_tiny_llava(os.path.join(workdir, "llava-tiny-profile"), seed=0, force=True)
    tokenizer, model, image_processor, _ = load_tiny(path)
    pil_images = variant_images(sample_image())
    images = images_for(model, image_processor, pil_images)
    ids, mask = left_padded([prompt_ids(tokenizer, question) for question in QUESTIONS])
    common = dict(attention_mask=mask, images=images, image_sizes=[image.size for image in pil_images],
                  do_sample=False, max_new_tokens=8, logits_processor=no_eos(tokenizer))
    tokens = {}
    with llava_avc.patched():
        single = model.generate(ids[:1, -int(mask[0].sum()):], images=images[:1],
                                image_sizes=[pil_images[0].size], do_sample=False, max_new_tokens=8,
                                logits_processor=no_eos(tokenizer))
        tokens["upstream_greedy"] = single[:, LEAD:].tolist()
        for config in (AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)):
            out = model.generate(ids, **common, **{config.method: config})
            tokens[config.method] = out[:, LEAD:].tolist()
    print(json.dumps({"transformers": transformers.__version__, "tokens": tokens}))


if __name__ == "__main__":
    main(sys.argv[1])
