"""lmms-eval's `llava` (the original LLaVA codebase, llava-torch) with llava-avc's methods: `lmms-eval
--model llava_avc --model_args pretrained=liuhaotian/llava-v1.5-7b,method=avc,alpha=1.0 --tasks pope_random`.

`LlavaAvc` subclasses lmms-eval's `llava` (lmms-eval has only a simple flavour of it), so the checkpoint
loads through LLaVA's `load_pretrained_model` as there and each prompt is built as there (`<image>` prepended
to the task's text, lmms-eval's `conv_template`, default vicuna_v1); it differs in what `llava_hf_avc`
differs in (lmms_eval_methods.py): `method=` and its fields, `seed=`, left-padded batches, and a failed
generation raises. Generation runs through the original backend's pipeline (`LlavaPipeline.generate`):
`method=none` is LLaVA's own generate, which on transformers >= 4.38 needs llava-avc to run at all
(LLaVA 1.2.2's forward rejects what newer transformers pass it; no class is patched for it).
"""

from __future__ import annotations

import torch
from lmms_eval.models.simple.llava import Llava as _LmmsLlava
from loguru import logger

from ..backends.llava import prompts
from ..backends.llava.pipeline import LlavaPipeline
from .lmms_eval_methods import WithMethod, task_generation

MODEL_ID = "llava_avc"


class LlavaAvc(WithMethod, _LmmsLlava):
    """`--model llava_avc`: lmms-eval's llava with a method."""

    MODEL_ID = MODEL_ID
    is_simple = True

    def __init__(self, pretrained: str = "liuhaotian/llava-v1.5-7b", **model_args) -> None:
        super().__init__(pretrained=pretrained, **self._choose_method(model_args, _LmmsLlava))
        self._pipeline = LlavaPipeline(self._tokenizer, self.model, self._image_processor, self._max_length)
        self._log_choice()

    @property
    def _pad_id(self) -> int:
        """lmms-eval's llava's padding id: the tokenizer's pad token, else its eos."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _generation_kwargs(self, gen_kwargs: dict) -> dict:
        """The keyword arguments lmms-eval's llava passes to LLaVA's generate for a task's gen_kwargs (less
        the inputs)."""
        settings = task_generation(gen_kwargs)
        return {"pad_token_id": self._pad_id, "do_sample": settings["temperature"] > 0,
                "temperature": settings["temperature"], "top_p": settings["top_p"],
                "num_beams": settings["num_beams"], "max_new_tokens": settings["max_new_tokens"]}

    def _inputs(self, contexts: list, visuals: list) -> dict:
        """One left-padded batch: ids, attention mask, images (lmms-eval's fp16), image sizes."""
        images = self.flatten(visuals)
        self._check_one_image_each(images, len(contexts))
        texts = [prompts.conversation_prompt(context, self.conv_template, len(question_images))
                 for context, question_images in zip(contexts, visuals)]
        ids, mask = prompts.left_padded_ids([prompts.prompt_ids(self.tokenizer, text) for text in texts], self._pad_id)
        pixels = prompts.prepare_images(images, self._image_processor, self.model, self._config, dtype=torch.float16)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "images": pixels,
                "image_sizes": [image.size for image in images]}

    def generate_until(self, requests) -> list:
        order, batches = self._in_batches(requests)
        answers = []
        for chunk in batches:  # args: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
            contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            gen_kwargs = dict(all_gen_kwargs[0])
            if "image_aspect_ratio" in gen_kwargs and "image_aspect_ratio" not in self._config.__dict__:
                self._config.image_aspect_ratio = gen_kwargs.pop("image_aspect_ratio")  # as lmms-eval's llava
                logger.info(f"Setting image aspect ratio: {self._config.image_aspect_ratio}")
            documents = [self.task_dict[tasks[0]][splits[0]][doc_id] for doc_id in doc_ids]
            visuals = [list(doc_to_visual[0](document)) for document in documents]
            inputs = self._inputs(list(contexts), visuals)
            seeds = self._seeds(tasks[0], splits[0], doc_ids)
            sequences = self._pipeline.generate(inputs, self.choice.config, row_seeds=seeds,
                                                **self._generation_kwargs(gen_kwargs))
            answers.extend(self.tokenizer.batch_decode(sequences, skip_special_tokens=True))
        return order.get_original(answers)
