"""lmms-eval's `llava_hf` with llava-avc's methods (the llava-hf backend): `lmms-eval --model llava_hf_avc --model_args
pretrained=llava-hf/llava-1.5-7b-hf,method=avc,alpha=1.0,beta=0.1 --tasks pope_random --batch_size 8`.

Two classes, as lmms-eval has for its own `llava_hf`: `LlavaHfAvcChat` (lmms-eval's default: the task's
messages through the processor's chat template) and `LlavaHfAvc` (`--force_simple`: the task's text with
`<image>` prepended, through the tokenizer's chat template). Both subclass lmms-eval's `llava_hf`, so the
checkpoint loads and each prompt is built exactly as there; they differ in three things:

- `method=` (required: a registered method such as avc, vcd, m3id, or none) and the fields of the method's
  config as model_args (`alpha=1.0,gamma=0.5`), checked by llava-avc (one line: the value, the
  constraint, the fix); `seed=` gives every question sampling and noise seeds of its own (hashes of the
  seed and the task, split and doc id), so an answer does not depend on its batch;
- batches: `--batch_size N` answers N questions per generate call, left-padded (`llava_hf` asserts 1);
- a failed generation raises instead of becoming an empty answer.

`method=none` makes lmms-eval's own `llava_hf` call (`model.generate` with the same arguments); a method
runs `llava_avc.generate` through the llava-hf backend's pipeline (`HFPipeline.generate`).
"""

from __future__ import annotations

from typing import Optional

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.models.chat.llava_hf import LlavaHf as _LmmsLlavaHfChat
from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE
from lmms_eval.models.simple.llava_hf import LlavaHf as _LmmsLlavaHf
from lmms_eval.protocol import ChatMessages

from ..backends.hf.pipeline import HFPipeline
from ..errors import UserError
from .lmms_eval_methods import WithMethod, task_generation

MODEL_ID = "llava_hf_avc"


def generation_kwargs(gen_kwargs: dict, use_cache: bool, eos_token_id) -> dict:
    """The keyword arguments lmms-eval's llava_hf passes to `model.generate` for a task's gen_kwargs."""
    settings = task_generation(gen_kwargs)
    do_sample = settings["temperature"] > 0
    return {"do_sample": do_sample, "temperature": settings["temperature"] if do_sample else None,
            "top_p": settings["top_p"], "num_beams": settings["num_beams"],
            "max_new_tokens": settings["max_new_tokens"], "use_cache": use_cache, "pad_token_id": eos_token_id,
            "eos_token_id": eos_token_id}


class _WithHFMethod(WithMethod):
    """What both classes add to lmms-eval's llava_hf: the llava-hf backend's pipeline answers a batch."""

    MODEL_ID = MODEL_ID

    def _after_load(self) -> None:
        self._pipeline = HFPipeline(self._image_processor, self.model)
        self._log_choice()

    def _answer(self, texts: list, images: list, gen_kwargs: dict, seeds: Optional[list]) -> list:
        """[(answer text, new token count)] for prompts `texts` with one image each, as one left-padded batch."""
        self._check_one_image_each(images, len(texts))
        inputs = self._image_processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self._device, self.model.dtype)
        kwargs = generation_kwargs(gen_kwargs, self.use_cache, self.eot_token_id)
        with torch.inference_mode():
            if self.choice.config is None and not (seeds is not None and kwargs["do_sample"]):
                sequences = self.model.generate(**inputs, **kwargs)  # exactly lmms-eval's llava_hf call
            else:
                sequences = self._pipeline.generate(dict(inputs), self.choice.config, row_seeds=seeds, **kwargs)
        new_tokens = sequences[:, inputs["input_ids"].shape[1]:]  # (B, N): every row left-padded to one length
        answers = []
        for ids in new_tokens:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            answers.append((text, int((ids != self.eot_token_id).sum())))
        return answers


class LlavaHfAvc(_WithHFMethod, _LmmsLlavaHf):
    """`--model llava_hf_avc --force_simple`: lmms-eval's simple llava_hf with a method."""

    is_simple = True

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **model_args) -> None:
        super().__init__(pretrained=pretrained, **self._choose_method(model_args, _LmmsLlavaHf))
        self._after_load()

    def _prompt(self, context: str, image_count: int) -> str:
        """The prompt llava_hf builds: `<image>` tokens prepended when missing, the tokenizer's chat template
        (the model_args' chat_template, else the tokenizer's own, else lmms-eval's Vicuna template)."""
        if DEFAULT_IMAGE_TOKEN not in context and image_count:
            context = f"{' '.join([DEFAULT_IMAGE_TOKEN] * image_count)}\n{context}"
        if self.chat_template is not None:
            self.tokenizer.chat_template = self.chat_template
        elif self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate_until(self, requests) -> list:
        order, batches = self._in_batches(requests)
        answers = []
        for chunk in batches:  # args: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
            contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            documents = [self.task_dict[tasks[0]][splits[0]][doc_id] for doc_id in doc_ids]
            visuals = [list(doc_to_visual[0](document)) for document in documents]
            texts = [self._prompt(context, len(images)) for context, images in zip(contexts, visuals)]
            images = self.flatten(visuals)
            seeds = self._seeds(tasks[0], splits[0], doc_ids)
            answers.extend(text for text, _ in self._answer(texts, images, dict(all_gen_kwargs[0]), seeds))
        return order.get_original(answers)


class LlavaHfAvcChat(_WithHFMethod, _LmmsLlavaHfChat):
    """`--model llava_hf_avc`: lmms-eval's chat llava_hf with a method."""

    is_simple = False
    GEN_KWARGS_ARG = 2

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **model_args) -> None:
        super().__init__(pretrained=pretrained, **self._choose_method(model_args, _LmmsLlavaHf))
        self._after_load()

    def generate_until(self, requests) -> list:
        order, batches = self._in_batches(requests)
        results = []
        for chunk in batches:  # args: (context, doc_to_messages, gen_kwargs, doc_id, task, split)
            _, doc_to_messages, all_gen_kwargs, doc_ids, tasks, splits = zip(*chunk)
            texts, images = [], []
            for doc_id in doc_ids:
                chat = ChatMessages(messages=doc_to_messages[0](self.task_dict[tasks[0]][splits[0]][doc_id]))
                visuals, videos, _ = chat.extract_media()
                if videos:
                    raise UserError(f"{self.MODEL_ID} answers questions about images; {tasks[0]} doc {doc_id} has a "
                                    "video.")
                texts.append(self._image_processor.apply_chat_template(chat.model_dump()["messages"], tokenize=False,
                                                                       add_generation_prompt=True))
                images.extend(visuals)
            seeds = self._seeds(tasks[0], splits[0], doc_ids)
            for text, count in self._answer(texts, images, dict(all_gen_kwargs[0]), seeds):
                results.append(GenerationResult(text=text, token_counts=TokenCounts(output_tokens=count)))
        return order.get_original(results)
