"""llava-avc's methods as lmms-eval models: `lmms-eval --model llava_hf_avc --model_args
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

import dataclasses
import inspect
from typing import Optional

import torch
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.models.chat.llava_hf import LlavaHf as _LmmsLlavaHfChat
from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE
from lmms_eval.models.simple.llava_hf import LlavaHf as _LmmsLlavaHf
from lmms_eval.protocol import ChatMessages
from loguru import logger

from ..algorithm.config import MethodConfig
from ..algorithm.seeds import question_seed
from ..backends.hf.pipeline import HFPipeline
from ..decode.methods import NO_METHOD, get_method, method_names
from ..errors import UserError

#: What lmms-eval's llava_hf uses when a task's generation_kwargs leave them out.
GENERATION_DEFAULTS = {"max_new_tokens": 1024, "temperature": 0, "top_p": None, "num_beams": 1}


@dataclasses.dataclass(frozen=True)
class MethodChoice:
    """What the model_args chose: a method's config (None: the model's own decoding) and a run seed."""

    config: Optional[MethodConfig]
    seed: Optional[int]

    @property
    def name(self) -> str:
        return NO_METHOD if self.config is None else self.config.method

    def describe(self) -> str:
        """One line for the log: the method and every field of its config (defaults included)."""
        fields = "" if self.config is None else ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
        seed = "" if self.seed is None else f"; seed {self.seed}"
        return f"method {self.name}" + (f" ({fields})" if fields else "") + seed


def _typed(field: dataclasses.Field, value):
    """lmms-eval's parsed model_arg for a config field: "1" arrives as int 1, which a float field takes."""
    if isinstance(field.default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def method_choice(model_args: dict) -> tuple:
    """(MethodChoice, the model_args left for llava_hf) out of lmms-eval's parsed model_args.

    Raises:
        UserError: no method, an unknown method, a field the method's config does not have or a value
            it refuses, a seed that is not a non-negative integer, a model_arg llava_hf does not take.
    """
    args = dict(model_args)
    if "method" not in args:
        raise UserError(f"--model_args needs method= (one of {', '.join((*method_names(), NO_METHOD))}), e.g. "
                        "pretrained=llava-hf/llava-1.5-7b-hf,method=avc; none is lmms-eval's own llava_hf decoding.")
    name = str(args.pop("method")).strip().lower()
    seed = args.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UserError(f"--model_args seed (={seed!r}) must be a non-negative integer, e.g. seed=42.")
    config = None
    fields = {}
    if name != NO_METHOD:
        config_class = get_method(name).config_class
        fields = {field.name: field for field in dataclasses.fields(config_class) if field.init}
        config = config_class(**{key: _typed(fields[key], args.pop(key)) for key in list(args) if key in fields})
    _check_llava_hf_args(args, name, fields)
    return MethodChoice(config, seed), args


def _check_llava_hf_args(args: dict, method: str, fields: dict) -> None:
    known = [name for name in inspect.signature(_LmmsLlavaHf.__init__).parameters if name not in ("self", "kwargs")]
    unknown = [key for key in args if key not in known]
    if unknown:
        takes = f"method {method} takes {', '.join(fields)}; " if fields else f"method {method} takes no fields; "
        raise UserError(f"--model_args {unknown[0]}={args[unknown[0]]!r} is not a model_arg of llava_hf_avc: {takes}"
                        f"llava_hf takes {', '.join(known)}; besides them: method, seed.")


def generation_kwargs(gen_kwargs: dict, use_cache: bool, eos_token_id) -> dict:
    """The keyword arguments lmms-eval's llava_hf passes to `model.generate` for a task's gen_kwargs."""
    settings = {**GENERATION_DEFAULTS, **{k: v for k, v in gen_kwargs.items() if k in GENERATION_DEFAULTS}}
    do_sample = settings["temperature"] > 0
    return {"do_sample": do_sample, "temperature": settings["temperature"] if do_sample else None,
            "top_p": settings["top_p"], "num_beams": settings["num_beams"],
            "max_new_tokens": settings["max_new_tokens"], "use_cache": use_cache, "pad_token_id": eos_token_id,
            "eos_token_id": eos_token_id}


class _WithMethod:
    """What both classes add to lmms-eval's llava_hf: the method, batches, per-question seeds."""

    #: Where a request's args hold the task's gen_kwargs (simple: 1, chat: 2); doc_id, task and split are
    #: args 3, 4 and 5 in both flavours.
    GEN_KWARGS_ARG = 1

    def _in_batches(self, requests) -> tuple:
        """(lmms-eval's Collator, its batches): requests ordered by doc id, each batch of one task, split
        and gen_kwargs; `Collator.get_original` puts the answers back in request order."""
        gen = self.GEN_KWARGS_ARG
        order = utils.Collator([request.args for request in requests], lambda args: (args[3], args[3]),
                               group_fn=lambda args: {"task": args[4], "split": args[5], "gen": repr(args[gen])},
                               grouping=True)
        return order, order.get_batched(n=self.batch_size, batch_fn=None)

    def _choose_method(self, model_args: dict) -> dict:
        self.choice, rest = method_choice(model_args)
        return rest

    def _after_load(self) -> None:
        self._pipeline = HFPipeline(self._image_processor, self.model)
        logger.info(f"llava_hf_avc: {self.choice.describe()}")

    def _seeds(self, task: str, split: str, doc_ids) -> Optional[list]:
        if self.choice.seed is None:
            return None
        return [question_seed(self.choice.seed, f"{task}/{split}/{doc_id}") for doc_id in doc_ids]

    def _answer(self, texts: list, images: list, gen_kwargs: dict, seeds: Optional[list]) -> list:
        """[(answer text, new token count)] for prompts `texts` with one image each, as one left-padded batch."""
        if len(images) != len(texts):
            raise UserError(f"llava_hf_avc answers one image per question; this task gave {len(images)} images for "
                            f"{len(texts)} questions (one question has several or none).")
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

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("llava_hf_avc answers single-round tasks (as lmms-eval's llava_hf).")


class LlavaHfAvc(_WithMethod, _LmmsLlavaHf):
    """`--model llava_hf_avc --force_simple`: lmms-eval's simple llava_hf with a method."""

    is_simple = True

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **model_args) -> None:
        super().__init__(pretrained=pretrained, **self._choose_method(model_args))
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


class LlavaHfAvcChat(_WithMethod, _LmmsLlavaHfChat):
    """`--model llava_hf_avc`: lmms-eval's chat llava_hf with a method."""

    is_simple = False
    GEN_KWARGS_ARG = 2

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **model_args) -> None:
        super().__init__(pretrained=pretrained, **self._choose_method(model_args))
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
                    raise UserError(f"llava_hf_avc answers questions about images; {tasks[0]} doc {doc_id} has a "
                                    "video.")
                texts.append(self._image_processor.apply_chat_template(chat.model_dump()["messages"], tokenize=False,
                                                                       add_generation_prompt=True))
                images.extend(visuals)
            seeds = self._seeds(tasks[0], splits[0], doc_ids)
            for text, count in self._answer(texts, images, dict(all_gen_kwargs[0]), seeds):
                results.append(GenerationResult(text=text, token_counts=TokenCounts(output_tokens=count)))
        return order.get_original(results)
