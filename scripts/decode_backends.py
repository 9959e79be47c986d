"""The decode benchmark's two backends, one class each behind one small interface (`BenchBackend`):

    ensure_checkpoint(preset, directory)     reuse or build (seed 0) the preset's random checkpoint
    load_for_dtype(checkpoint, dtype, device) the model in fp32, fp16 or nf4 -> `LoadedModel`
    build_inputs(loaded, batch, prompt_tokens) the benchmark prompt and image, x batch -> `BenchInputs`
    method_call(method, loaded, inputs)       max_new_tokens -> output ids, greedy, EOS suppressed
    session()                                 what must be in force while the methods run

`LlavaBackend`: the original LLaVA codebase, patched (plain = upstream LLaVA generate).
`HFBackend`: llava-hf through transformers' generate (plain = transformers' own generate).
Both build the same prompt: a llava_v1 question with one image, padded with filler words until the
merged prompt has ``prompt_tokens`` positions. Tooling beside scripts/decode_benchmark.py, not part of
the installed package; it reaches the package through its public names only.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch

METHODS = ("plain", "lean", "avc", "avc_sequential", "vcd", "m3id")
DTYPES = ("fp32", "fp16", "nf4")
#: torch dtype of the unquantized weights of each benchmark dtype (nf4 computes in fp16).
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "nf4": torch.float16}
#: Merged prompt length of LLaVA-1.5 in the paper-style setting: 576 image tokens + 50 text tokens.
PROMPT_TOKENS = 626
QUESTION = "Is there a person in the image?"
#: Words appended to QUESTION until the prompt reaches PROMPT_TOKENS (any tokenizer).
_FILLER = ("Please", "answer", "with", "yes", "or", "no", "and", "then", "describe", "the", "image",
           "in", "one", "short", "sentence")
_ONE_TOKEN_FILLERS = ("a", "the", ".", ",")
#: (width, height) of the drawn image where matplotlib's sample photo is absent (the photo's size).
BENCH_IMAGE_SIZE = (512, 600)
#: The random checkpoints' seed.
SEED = 0
#: The repository's cache folder (git-ignored), whatever the working directory.
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"

Log = Callable[[str], None]


@dataclass
class BenchInputs:
    """The same prompt and image, repeated ``batch`` times."""

    input_ids: torch.Tensor  # (B, T): llava: one IMAGE_TOKEN_INDEX per row; hf: the expanded image tokens
    images: torch.Tensor  # (B, 3, H, W); hf LLaVA-NeXT: (B, patches, 3, H, W)
    image_sizes: Optional[Any]  # llava: [(width, height)] * B; hf: (B, 2) tensor or None
    question: str
    prompt_tokens: int  # merged length: text tokens + image tokens
    image_tokens: int
    extra: dict = field(default_factory=dict)  # the other families' processor outputs (image_grid_thw, ...), x batch


@dataclass
class LoadedModel:
    """A checkpoint loaded in one dtype: the model, its EOS id and whatever else the loader returned."""

    model: Any
    eos_token_id: int
    parts: tuple  # llava: (tokenizer, model, image_processor, context_len); hf: (processor, model)


def bench_image():
    """matplotlib's Grace Hopper photo (512x600), or a synthetic image where matplotlib is absent."""
    try:
        from llava_avc.testing.tiny import sample_image

        return sample_image()
    except (ImportError, OSError):  # no matplotlib (lent GPU machines) or no sample data: draw one
        from PIL import Image

        return Image.radial_gradient("L").resize(BENCH_IMAGE_SIZE).convert("RGB")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}.")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")


def _build_info(path: Path) -> dict:
    """The build record of a random checkpoint (llava_avc.testing.tiny.BUILD_INFO_FILE), {} without one."""
    from llava_avc.testing.tiny import BUILD_INFO_FILE

    try:
        return json.loads((path / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}


class BenchBackend(ABC):
    """One backend of the benchmark: its checkpoint, loading, inputs and the six methods' calls."""

    name: ClassVar[str]
    #: ``.cache/<checkpoint_prefix>-<preset>`` holds the preset's random checkpoint.
    checkpoint_prefix: ClassVar[str]

    def default_checkpoint_dir(self, preset: str) -> Path:
        return CACHE_DIR / f"{self.checkpoint_prefix}-{preset}"

    @abstractmethod
    def ensure_checkpoint(self, preset: str = "tiny", directory=None, *, device: str = "cpu",
                          log: Log = print) -> Path:
        """Reuse or build (seed 0) the random checkpoint of ``preset`` in ``directory`` (default:
        ``default_checkpoint_dir(preset)``); returns its resolved path."""

    @abstractmethod
    def load_for_dtype(self, checkpoint, dtype: str, device: str) -> LoadedModel:
        """The checkpoint in ``dtype`` (fp32, fp16 or nf4) on ``device``.

        Raises:
            ValueError: unknown dtype (and whatever the loader raises, e.g. nf4 where it cannot run).
        """

    @abstractmethod
    def build_inputs(self, loaded: LoadedModel, batch: int, prompt_tokens: int = PROMPT_TOKENS,
                     image=None) -> BenchInputs:
        """The benchmark prompt with ``prompt_tokens`` merged positions and one image, x ``batch``."""

    @abstractmethod
    def _calls(self, model, inputs: BenchInputs, eos_token_id: int) -> dict[str, Callable[[int], Any]]:
        """{method: max_new_tokens -> output} for every method of METHODS."""

    def method_call(self, method: str, loaded: LoadedModel, inputs: BenchInputs) -> Callable[[int], Any]:
        """``max_new_tokens -> output ids`` for one method, greedy, EOS suppressed."""
        check_method(method)
        return self._calls(loaded.model, inputs, loaded.eos_token_id)[method]

    def session(self):
        """What must be in force while the methods run (nothing by default)."""
        return contextlib.nullcontext()


# ------------------------------------------------------------------------------ original LLaVA


def _prompt_ids(tokenizer, question: str, model_config) -> torch.Tensor:
    from llava_avc.backends.llava.prompts import build_prompt, prompt_ids

    return prompt_ids(tokenizer, build_prompt(question, "llava_v1", model_config))  # (T,)


def _close_gap(tokenizer, model_config, question: str, num_ids: int):
    """(question, ids) with the first one-token filler that keeps the prompt within ``num_ids``, or None."""
    for short in _ONE_TOKEN_FILLERS:
        candidate_ids = _prompt_ids(tokenizer, f"{question} {short}", model_config)
        if len(candidate_ids) <= num_ids:
            return f"{question} {short}", candidate_ids
    return None


def fit_question(tokenizer, model_config, num_ids: int, base: str = QUESTION) -> tuple[str, torch.Tensor]:
    """Extend ``base`` with filler words until the llava_v1 prompt has ``num_ids`` ids (placeholder
    included). Returns (question, ids); the ids may be longer than asked if ``base`` already is."""
    question = base
    ids = _prompt_ids(tokenizer, question, model_config)
    for word in list(_FILLER) * (1 + num_ids // len(_FILLER)):
        if len(ids) >= num_ids:
            break
        candidate_ids = _prompt_ids(tokenizer, f"{question} {word}", model_config)
        if len(candidate_ids) <= num_ids:
            question, ids = f"{question} {word}", candidate_ids
            continue
        closed = _close_gap(tokenizer, model_config, question, num_ids)  # the word overshoots
        if closed is None:
            break
        question, ids = closed
    return question, ids


def _image_token_count(model, input_ids, images, image_sizes) -> int:
    """Number of image features LLaVA's merge produces for this image (576 for LLaVA-1.5)."""
    from llava_avc.backends.llava.adapter import LlavaAdapter

    with torch.no_grad():
        merged = LlavaAdapter(model).merge_image(input_ids, None, images, image_sizes)
    start, end = merged.image_spans[0]
    return end - start


def _reusable(path: Path, preset: str) -> bool:
    """A finished checkpoint of this preset whose vision tower path still exists (not moved)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return _build_info(path).get("preset") == preset and Path(config.get("mm_vision_tower", "")).is_dir()


class LlavaBackend(BenchBackend):
    """The original LLaVA codebase (llava-torch), patched by llava-avc while the methods run."""

    name = "llava"
    checkpoint_prefix = "llava-bench"  # LLaVA's loader needs 'llava' in the directory name

    def ensure_checkpoint(self, preset: str = "tiny", directory=None, *, device: str = "cpu",
                          log: Log = print) -> Path:
        """On CUDA the weights are created on the GPU (a 7B-shaped model takes seconds there instead of
        minutes on a CPU); if that fails the build falls back to the CPU."""
        path = Path(directory) if directory is not None else self.default_checkpoint_dir(preset)
        if _reusable(path, preset):
            return path.resolve()
        log(f"building a random {preset} checkpoint in {path} ...")
        start = time.perf_counter()
        built = self._build_on_gpu(path, preset, device, log) if str(device).startswith("cuda") else None
        if built is None:
            built = self._build(path, preset)
        log(f"built in {time.perf_counter() - start:.1f} s")
        return built

    @staticmethod
    def _build(path: Path, preset: str) -> Path:
        from llava_avc.testing.tiny import make_tiny_llava

        return make_tiny_llava(path, preset=preset, seed=SEED, force=True)

    def _build_on_gpu(self, path: Path, preset: str, device: str, log: Log) -> Optional[Path]:
        """The build with the weights created on ``device``; None (reported) when it fails."""
        built = None
        try:
            with torch.device(device):
                built = self._build(path, preset)
        except Exception as error:  # noqa: BLE001 - reported, then the CPU build is tried
            log(f"building on {device} failed ({type(error).__name__}: {error}); building on the CPU")
        torch.cuda.empty_cache()
        return built

    def load_for_dtype(self, checkpoint, dtype: str, device: str) -> LoadedModel:
        """Raises ValueError for nf4 without CUDA where transformers cannot quantize on the CPU
        (llava_avc.backends.llava.loading explains)."""
        from llava_avc.backends.llava.loading import load_model

        check_dtype(dtype)
        if dtype == "nf4":
            parts = load_model(str(checkpoint), load_4bit=True, device=device)
        else:
            parts = load_model(str(checkpoint), device=device, dtype=TORCH_DTYPES[dtype])
        tokenizer, model, _, _ = parts
        return LoadedModel(model=model, eos_token_id=tokenizer.eos_token_id, parts=parts)

    def build_inputs(self, loaded: LoadedModel, batch: int, prompt_tokens: int = PROMPT_TOKENS,
                     image=None) -> BenchInputs:
        from llava_avc.backends.llava.prompts import prepare_images

        tokenizer, model, image_processor, _ = loaded.parts
        image = image if image is not None else bench_image()
        images = prepare_images([image], image_processor, model, dtype=model.get_vision_tower().dtype)  # (1, 3, H, W)
        probe_ids = _prompt_ids(tokenizer, QUESTION, model.config).unsqueeze(0).to(model.device)  # (1, T)
        image_tokens = _image_token_count(model, probe_ids, images, [image.size])
        question, ids = fit_question(tokenizer, model.config, prompt_tokens - image_tokens + 1)
        ids = ids.unsqueeze(0).to(model.device)  # (1, T)
        return BenchInputs(
            input_ids=ids.repeat(batch, 1),
            images=images.repeat(batch, 1, 1, 1),
            image_sizes=[image.size] * batch,
            question=question,
            prompt_tokens=ids.shape[1] - 1 + image_tokens,
            image_tokens=image_tokens,
        )

    def _calls(self, model, inputs: BenchInputs, eos_token_id: int) -> dict[str, Callable[[int], Any]]:
        from transformers.generation import LogitsProcessorList, SuppressTokensLogitsProcessor

        from llava_avc.algorithm.config import AVCConfig, M3IDConfig, VCDConfig
        from llava_avc.interfaces.api import contrastive_generate, lean_generate

        def kwargs(n: int) -> dict:
            return dict(images=inputs.images, image_sizes=inputs.image_sizes, do_sample=False,
                        max_new_tokens=n, use_cache=True,
                        logits_processor=LogitsProcessorList([SuppressTokensLogitsProcessor([eos_token_id])]))

        ids = inputs.input_ids
        return {
            "plain": lambda n: model.generate(ids, **kwargs(n)),
            "lean": lambda n: lean_generate(model, ids, **kwargs(n)),
            "avc": lambda n: model.generate(ids, avc=AVCConfig(), **kwargs(n)),
            "avc_sequential": lambda n: contrastive_generate(model, ids, config=AVCConfig(), sequential=True,
                                                             **kwargs(n)),
            "vcd": lambda n: model.generate(ids, vcd=VCDConfig(), **kwargs(n)),
            "m3id": lambda n: model.generate(ids, m3id=M3IDConfig(), **kwargs(n)),
        }

    def session(self):
        """llava-avc's patch of the original LLaVA (the method keywords of ``model.generate``)."""
        from llava_avc.patches.llava_patch import patched

        return patched()


# ------------------------------------------------------------------------------------ llava-hf


def _fit_hf_question(ids_of: Callable[[str], dict], prompt_tokens: int) -> tuple[str, dict]:
    """QUESTION extended with filler words while the processed prompt stays within ``prompt_tokens``
    ids (image tokens included); (question, processor outputs)."""
    question, inputs = QUESTION, ids_of(QUESTION)
    for word in list(_FILLER) * (1 + prompt_tokens // len(_FILLER)):
        if inputs["input_ids"].shape[1] >= prompt_tokens:
            break
        candidate = ids_of(f"{question} {word}")
        if candidate["input_ids"].shape[1] > prompt_tokens:
            break
        question, inputs = f"{question} {word}", candidate
    return question, inputs


class HFBackend(BenchBackend):
    """llava-hf checkpoints through transformers' own classes and generate."""

    name = "hf"
    checkpoint_prefix = "llava-bench-hf"

    def ensure_checkpoint(self, preset: str = "tiny", directory=None, *, device: str = "cpu",
                          log: Log = print) -> Path:
        """Built on the CPU whatever ``device`` is (the llava-hf factory writes files directly)."""
        from llava_avc.testing.tiny_hf import make_tiny_llava_hf

        path = Path(directory) if directory is not None else self.default_checkpoint_dir(preset)
        if _build_info(path).get("preset") == preset:
            return path.resolve()
        log(f"building a random llava-hf {preset} checkpoint in {path} ...")
        return make_tiny_llava_hf(path, preset=preset, seed=SEED, force=True)

    @staticmethod
    def _model(checkpoint, dtype: str, device: str):
        """The checkpoint's class (its config.json's family) in ``dtype`` on ``device``; nf4 is llava-avc's own
        BitsAndBytesConfig (the family's vision tower, projector and lm_head kept)."""
        import transformers

        from llava_avc.backends.hf.pipeline import checkpoint_family, quantization_config

        check_dtype(dtype)
        family = checkpoint_family(str(checkpoint))
        kwargs: dict = {"dtype": TORCH_DTYPES[dtype]}
        if dtype == "nf4":
            kwargs.update(quantization_config=quantization_config(True, False, family), device_map=device)
        model = getattr(transformers, family.class_name).from_pretrained(str(checkpoint), **kwargs).eval()
        if dtype != "nf4":
            model.to(device)
        return model

    def load_for_dtype(self, checkpoint, dtype: str, device: str) -> LoadedModel:
        """The model (Llava or LlavaNext, as its config.json says) and its AutoProcessor."""
        from transformers import AutoProcessor

        model = self._model(checkpoint, dtype, device)
        processor = AutoProcessor.from_pretrained(str(checkpoint))
        return LoadedModel(model=model, eos_token_id=processor.tokenizer.eos_token_id, parts=(processor, model))

    def build_inputs(self, loaded: LoadedModel, batch: int, prompt_tokens: int = PROMPT_TOKENS,
                     image=None) -> BenchInputs:
        """The chat template's prompt, one image, padded to ``prompt_tokens`` ids (image tokens included)."""
        from llava_avc.backends.hf.pipeline import HFPipeline

        processor, model = loaded.parts
        pipeline = HFPipeline(processor, model)
        image = image if image is not None else bench_image()
        question, inputs = _fit_hf_question(lambda text: pipeline.inputs([text], [image]), prompt_tokens)
        pixels = inputs["pixel_values"]  # (1, 3, H, W); LLaVA-NeXT (1, patches, 3, H, W)
        sizes = inputs.get("image_sizes")  # (1, 2) or None
        return BenchInputs(
            input_ids=inputs["input_ids"].repeat(batch, 1),
            images=pixels.repeat(batch, *([1] * (pixels.dim() - 1))),
            image_sizes=None if sizes is None else sizes.repeat(batch, 1),
            question=question,
            prompt_tokens=inputs["input_ids"].shape[1],
            image_tokens=int((inputs["input_ids"] == model.config.image_token_id).sum()),
        )

    def _calls(self, model, inputs: BenchInputs, eos_token_id: int) -> dict[str, Callable[[int], Any]]:
        import llava_avc
        from llava_avc.algorithm.config import AVCConfig, M3IDConfig, VCDConfig
        from llava_avc.backends.hf import generate_with
        from llava_avc.backends.hf.generation import contrastive_decoding, lean_decoding

        def kwargs(n: int) -> dict:
            sizes = {} if inputs.image_sizes is None else {"image_sizes": inputs.image_sizes}
            return dict(input_ids=inputs.input_ids, pixel_values=inputs.images, do_sample=False, max_new_tokens=n,
                        suppress_tokens=[eos_token_id], **sizes, **inputs.extra)

        # lean and avc_sequential through `generate_with`: the model's generate with the decoding function
        # (InstructBLIP: its language model's, the model beside it).
        return {
            "plain": lambda n: model.generate(**kwargs(n)),
            "lean": lambda n: generate_with(model, lean_decoding, kwargs(n)),
            "avc": lambda n: llava_avc.generate(model, avc=AVCConfig(), **kwargs(n)),
            "avc_sequential": lambda n: generate_with(model, contrastive_decoding, kwargs(n), avc=AVCConfig(),
                                                      sequential=True),
            "vcd": lambda n: llava_avc.generate(model, vcd=VCDConfig(), **kwargs(n)),
            "m3id": lambda n: llava_avc.generate(model, m3id=M3IDConfig(), **kwargs(n)),
        }


# ------------------------------------------------------------------------- the other families


class FamilyBackend(HFBackend):
    """A family of the llava-hf backend beyond LLaVA (``--family``): its tiny random checkpoint
    (llava_avc.testing.tiny_families) and the inputs its processor makes (llava_avc.testing.family_inputs)."""

    family: ClassVar[str] = ""

    @property
    def checkpoint_prefix(self) -> str:
        return f"bench-{self.family}"

    def ensure_checkpoint(self, preset: str = "tiny", directory=None, *, device: str = "cpu",
                          log: Log = print) -> Path:
        from llava_avc.testing.tiny_families import make_tiny_family

        if preset != "tiny":
            raise ValueError(f"--preset {preset} is not built for --family {self.family}: the families have tiny "
                             "random checkpoints only (pass --checkpoint DIR for a real one).")
        path = Path(directory) if directory is not None else self.default_checkpoint_dir(preset)
        if _build_info(path).get("family") == self.family:
            return path.resolve()
        log(f"building a random {self.family} checkpoint in {path} ...")
        return make_tiny_family(path, self.family, seed=SEED, force=True)

    def load_for_dtype(self, checkpoint, dtype: str, device: str) -> LoadedModel:
        """The family's model and the inputs its processor makes (llava_avc.testing.family_inputs)."""
        from llava_avc.testing.family_inputs import FamilyInputs

        model = self._model(checkpoint, dtype, device)
        inputs = FamilyInputs(self.family, checkpoint, model)
        return LoadedModel(model=model, eos_token_id=inputs.tokenizer.eos_token_id, parts=(inputs, model))

    def build_inputs(self, loaded: LoadedModel, batch: int, prompt_tokens: int = PROMPT_TOKENS,
                     image=None) -> BenchInputs:
        """The family's prompt, one image, padded to ``prompt_tokens`` ids (image tokens included)."""
        processor, model = loaded.parts
        image = image if image is not None else bench_image()
        device = model.device
        question, inputs = _fit_hf_question(lambda text: processor([image], [processor.prompt(text)]), prompt_tokens)
        info = "image_sizes" if "image_sizes" in inputs else None  # the one image info BenchInputs names
        extra = {key: value.to(device) for key, value in inputs.items()
                 if key not in ("input_ids", "attention_mask", "pixel_values", info)}
        # batch copies of the row (Qwen: of the image's patches, and of its grid row in `extra`)
        pixels = inputs["pixel_values"].repeat(batch, *([1] * (inputs["pixel_values"].dim() - 1)))
        return BenchInputs(
            input_ids=inputs["input_ids"].repeat(batch, 1).to(device),
            images=pixels.to(device, next(model.parameters()).dtype),
            image_sizes=None if info is None else inputs[info].repeat(batch, 1).to(device),
            question=question,
            prompt_tokens=inputs["input_ids"].shape[1],
            image_tokens=int((inputs["input_ids"] == model.config.image_token_id).sum()),
            extra={key: value.repeat(batch, *([1] * (value.dim() - 1))) for key, value in extra.items()},
        )


def _family_backend(family: str) -> type[BenchBackend]:
    return type(f"{family}Backend", (FamilyBackend,), {"name": family, "family": family})


#: backend name -> its class (run_benchmark's ``backend`` argument; bench_decode.py's --backend, or --family
#: for the other families of the llava-hf backend).
BACKENDS: dict[str, type[BenchBackend]] = {backend.name: backend for backend in (
    LlavaBackend, HFBackend, *(_family_backend(family) for family in
                               ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "instructblip")))}
