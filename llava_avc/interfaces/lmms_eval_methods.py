"""What llava-avc's lmms-eval models add to lmms-eval's own, whatever the backend: the method chosen by
`--model_args` (`method=avc,alpha=1.0,...`, `seed=`), batches of one task, split and gen_kwargs, and seeds
of each question's own.

`llava_hf_avc` (lmms_eval_models.py: lmms-eval's `llava_hf`, the llava-hf backend) and `llava_avc`
(lmms_eval_llava.py: lmms-eval's `llava`, the original LLaVA codebase) mix `WithMethod` into lmms-eval's
class; lmms-eval imports them only when asked for that model.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Optional

from lmms_eval import utils
from loguru import logger

from ..algorithm.config import MethodConfig
from ..algorithm.seeds import question_seed
from ..decode.methods import NO_METHOD, get_method, method_names
from ..errors import UserError

#: What lmms-eval's llava_hf and llava use when a task's generation_kwargs leave them out.
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


def method_choice(model_args: dict, model_id: str, base_class: type) -> tuple:
    """(MethodChoice, the model_args left for `base_class`, lmms-eval's own model) out of lmms-eval's
    parsed model_args for the model `model_id`.

    Raises:
        UserError: no method, an unknown method, a field the method's config does not have or a value
            it refuses, a seed that is not a non-negative integer, a model_arg `base_class` does not take.
    """
    args = dict(model_args)
    if "method" not in args:
        raise UserError(f"--model_args needs method= (one of {', '.join((*method_names(), NO_METHOD))}), e.g. "
                        f"pretrained=...,method=avc; none is lmms-eval's own decoding.")
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
    _check_base_args(args, name, fields, model_id, base_class)
    return MethodChoice(config, seed), args


def _check_base_args(args: dict, method: str, fields: dict, model_id: str, base_class: type) -> None:
    known = [name for name in inspect.signature(base_class.__init__).parameters if name not in ("self", "kwargs")]
    unknown = [key for key in args if key not in known]
    if unknown:
        base = base_class.__module__.rsplit(".", 1)[-1]
        takes = f"method {method} takes {', '.join(fields)}; " if fields else f"method {method} takes no fields; "
        raise UserError(f"--model_args {unknown[0]}={args[unknown[0]]!r} is not a model_arg of {model_id}: {takes}"
                        f"{base} takes {', '.join(known)}; besides them: method, seed.")


def task_generation(gen_kwargs: dict) -> dict:
    """A task's gen_kwargs with lmms-eval's defaults: max_new_tokens, temperature, top_p, num_beams."""
    return {**GENERATION_DEFAULTS, **{k: v for k, v in gen_kwargs.items() if k in GENERATION_DEFAULTS}}


class WithMethod:
    """Mixed into an lmms-eval model: the method, batches, per-question seeds."""

    #: The name users give `--model`.
    MODEL_ID = ""
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

    def _choose_method(self, model_args: dict, base_class: type) -> dict:
        self.choice, rest = method_choice(model_args, self.MODEL_ID, base_class)
        return rest

    def _log_choice(self) -> None:
        logger.info(f"{self.MODEL_ID}: {self.choice.describe()}")

    def _seeds(self, task: str, split: str, doc_ids) -> Optional[list]:
        if self.choice.seed is None:
            return None
        return [question_seed(self.choice.seed, f"{task}/{split}/{doc_id}") for doc_id in doc_ids]

    def _check_one_image_each(self, images: list, questions: int) -> None:
        if len(images) != questions:
            raise UserError(f"{self.MODEL_ID} answers one image per question; this task gave {len(images)} images "
                            f"for {questions} questions (one question has several or none).")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.MODEL_ID} answers single-round tasks (as lmms-eval's own model).")
