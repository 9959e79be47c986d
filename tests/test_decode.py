"""AVC / VCD / M3ID decoding through the real llava-torch on tiny random checkpoints (CPU)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from llava.mm_utils import KeywordsStoppingCriteria  # noqa: E402
from transformers.generation import LogitsProcessorList, StoppingCriteriaList  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.algorithm.contrast import NonFiniteLogitsError, m3id_logits, vcd_logits  # noqa: E402
from llava_avc.decode.prefill import biased_embeds  # noqa: E402
from llava_avc.interfaces.api import contrastive_generate  # noqa: E402
from llava_avc.algorithm.blind import noise_generator  # noqa: E402
from llava_avc.algorithm.noise import add_diffusion_noise  # noqa: E402
from llava_avc.backends.llava.adapter import LlavaAdapter  # noqa: E402

from helpers import LEAD, QUESTIONS, ForceTokens, images_for, left_padded, no_eos, prompt_ids, variant_images  # noqa: E402
from reference_equations import contrast as reference_contrast  # noqa: E402
from reference_avc import full_forward, reference_prefill  # noqa: E402

NEW_TOKENS = 6
CONFIGS = [AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)]


@pytest.fixture(autouse=True)
def _patched():
    with llava_avc.patched():
        yield


@pytest.fixture(scope="module")
def single(tiny_llava, sample_image):
    """One prompt: (ids (1, T), images (1, 3, H, W), image_sizes)."""
    tokenizer, model, image_processor, _ = tiny_llava
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    return ids, images_for(model, image_processor, [sample_image]), [sample_image.size]


def generate(model, tokenizer, ids, images, sizes, **kwargs):
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("max_new_tokens", NEW_TOKENS)
    kwargs.setdefault("logits_processor", no_eos(tokenizer))
    return model.generate(ids, images=images, image_sizes=sizes, **kwargs)


# ---------------------------------------------------------------- equivalence with upstream


@pytest.mark.parametrize("config", [AVCConfig(alpha=0.0), VCDConfig(alpha=0.0), M3IDConfig(lam=0.0)],
                         ids=["avc", "vcd", "m3id"])
@pytest.mark.smoke
def test_zero_strength_reproduces_upstream_greedy(tiny_llava, single, config):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    upstream = generate(model, tokenizer, ids, images, sizes, max_new_tokens=12)
    ours = generate(model, tokenizer, ids, images, sizes, max_new_tokens=12, **{config.method: config})
    assert ours.tolist() == upstream.tolist()


def test_lean_loop_reproduces_upstream_greedy_and_scores(tiny_llava, single):
    from llava_avc.interfaces.api import lean_generate

    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    kwargs = dict(do_sample=False, max_new_tokens=12, logits_processor=no_eos(tokenizer),
                  return_dict_in_generate=True, output_scores=True)
    upstream = model.generate(ids, images=images, image_sizes=sizes, **kwargs)
    lean = lean_generate(model, ids, images=images, image_sizes=sizes, **kwargs)
    assert lean.sequences.tolist() == upstream.sequences.tolist()
    for theirs, ours in zip(upstream.scores, lean.scores):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_default_method_applies_to_calls_that_name_none(tiny_llava, single):
    from llava_avc.patches.llava_patch import GENERATE_CALLS, default_method

    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    explicit = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig())
    before = GENERATE_CALLS["avc"]
    with default_method(AVCConfig()):
        implicit = generate(model, tokenizer, ids, images, sizes)
    assert implicit.tolist() == explicit.tolist()
    assert GENERATE_CALLS["avc"] == before + 1
    assert generate(model, tokenizer, ids, images, sizes).tolist() != explicit.tolist()


def test_max_length_means_what_upstream_generate_means(tiny_llava, single):
    """transformers 4.37 counts BOS + new tokens in max_length; 4.38+ counts the prompt embeddings too."""
    from llava_avc.backends.transformers_compat import generate_returns_leading_bos

    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    prompt_length = ids.shape[1] - 1 + 576
    max_length = 7 if generate_returns_leading_bos() else prompt_length + 6
    upstream = generate(model, tokenizer, ids, images, sizes, max_new_tokens=None, max_length=max_length)
    ours = generate(model, tokenizer, ids, images, sizes, max_new_tokens=None, max_length=max_length,
                    avc=AVCConfig(alpha=0.0))
    assert ours.tolist() == upstream.tolist() and ours.shape[1] == LEAD + 6
    if not generate_returns_leading_bos():
        with pytest.raises(ValueError, match="counts the .* prompt positions"):
            generate(model, tokenizer, ids, images, sizes, max_new_tokens=None, max_length=30, avc=AVCConfig())


def test_zero_alpha_scores_match_upstream_on_plausible_tokens(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    kwargs = dict(return_dict_in_generate=True, output_scores=True)
    upstream = generate(model, tokenizer, ids, images, sizes, **kwargs)
    ours = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(alpha=0.0), **kwargs)
    for step, (theirs, mine) in enumerate(zip(upstream.scores, ours.scores)):
        plausible = torch.isfinite(mine)
        assert plausible.sum() >= 1, step
        torch.testing.assert_close(mine[plausible], theirs[plausible], atol=1e-4, rtol=1e-4)


def test_avc_shifts_step_0_scores_by_alpha_times_the_gap_to_the_reference_biased_branch(tiny_llava, single):
    """On the plausible tokens (l >= log(beta) + max l), AVC - plain = alpha * (l - l*), with l* the
    logits of the independent reference's biased input (tests/reference_avc.py); the rest is -inf."""
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    config = AVCConfig()
    kwargs = dict(return_dict_in_generate=True, output_scores=True, max_new_tokens=1)
    plain = generate(model, tokenizer, ids, images, sizes, **kwargs).scores[0][0]
    avc = generate(model, tokenizer, ids, images, sizes, avc=config, **kwargs).scores[0][0]
    prefill = reference_prefill(model, ids, images, sizes, config.gamma, config.lam, config.masking)
    logits = full_forward(model, prefill.embeds).logits[0, -1].float()
    biased = full_forward(model, prefill.biased).logits[0, -1].float()
    plausible = logits >= math.log(config.beta) + logits.max()
    plausible[tokenizer.eos_token_id] = False  # no_eos: -inf in both runs
    assert torch.equal(torch.isfinite(avc), plausible)
    shift = avc[plausible] - plain[plausible]
    torch.testing.assert_close(shift, config.alpha * (logits - biased)[plausible], atol=1e-4, rtol=1e-4)
    assert float(shift.abs().max()) > 1.0  # a shift the argmax can feel (tiny checkpoint: several logits)


def test_first_step_scores_equal_hand_computed_contrasts(tiny_llava, single):
    """Step-0 scores of each method equal its formula applied to logits from LLaVA's own forward."""
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    kwargs = dict(return_dict_in_generate=True, output_scores=True, max_new_tokens=1, logits_processor=None)
    logits = model(input_ids=ids, images=images, image_sizes=sizes).logits[:, -1].float()
    # AVC: the biased branch is LLaVA's forward on the masked merged embeddings, blind tokens and
    # masking from the independent reference (tests/reference_avc.py), not the library's own.
    config = AVCConfig()
    prefill = reference_prefill(model, ids, images, sizes, config.gamma, config.lam, config.masking)
    biased = model(inputs_embeds=prefill.biased).logits[:, -1].float()
    got = generate(model, tokenizer, ids, images, sizes, avc=config, **kwargs).scores[0]
    torch.testing.assert_close(got, reference_contrast(logits, biased, config.alpha, config.beta),
                               atol=1e-4, rtol=1e-4)
    # VCD: the biased branch is LLaVA's forward on the diffusion-noised image.
    config = VCDConfig()
    noised = add_diffusion_noise(images[0], config.noise_step, noise_generator(config.noise_seed))[None]
    noised_logits = model(input_ids=ids, images=noised, image_sizes=sizes).logits[:, -1].float()
    got = generate(model, tokenizer, ids, images, sizes, vcd=config, **kwargs).scores[0]
    torch.testing.assert_close(got, vcd_logits(logits, noised_logits, config.alpha, config.beta), atol=1e-4, rtol=1e-4)
    # M3ID: the unconditioned branch is the prompt without the image placeholder, t = 1.
    config = M3IDConfig(lam=0.5)
    text_ids = ids[ids != -200].unsqueeze(0)
    uncond = model(input_ids=text_ids).logits[:, -1].float()
    got = generate(model, tokenizer, ids, images, sizes, m3id=config, **kwargs).scores[0]
    torch.testing.assert_close(got, m3id_logits(logits, uncond, 1, config.lam, config.beta), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("config", CONFIGS, ids=["avc", "vcd", "m3id"])
def test_left_padded_batch_matches_one_prompt_at_a_time(tiny_llava, sample_image, config, padding_side):
    tokenizer, model, image_processor, _ = tiny_llava
    rows = [prompt_ids(tokenizer, question) for question in QUESTIONS]
    pil_images = variant_images(sample_image)
    images = images_for(model, image_processor, pil_images)
    sizes = [image.size for image in pil_images]
    ids, mask = left_padded(rows)
    saved = model.config.tokenizer_padding_side
    model.config.tokenizer_padding_side = padding_side
    try:
        batch = generate(model, tokenizer, ids, images, sizes, attention_mask=mask, **{config.method: config})
        for index, row in enumerate(rows):
            alone = generate(model, tokenizer, row.unsqueeze(0), images[index:index + 1], [sizes[index]],
                             **{config.method: config})
            assert batch[index].tolist() == alone[0].tolist(), f"row {index}"
    finally:
        model.config.tokenizer_padding_side = saved


def test_batch_rows_have_their_own_span_layers_and_threshold(tiny_llava, sample_image):
    tokenizer, model, image_processor, _ = tiny_llava
    rows = [prompt_ids(tokenizer, question) for question in QUESTIONS]
    pil_images = variant_images(sample_image)
    ids, mask = left_padded(rows)
    images = images_for(model, image_processor, pil_images)
    records = llava_avc.find_blind_tokens(model, ids, images, [im.size for im in pil_images],
                                          AVCConfig(), attention_mask=mask)
    length = ids.shape[1] - 1 + 576
    for row, record in zip(rows, records):
        start, end = record.image_span
        placeholder = int((row == -200).nonzero())
        assert (start, end) == (length - (len(row) - 1 + 576) + placeholder, start + 576)
    assert len({tuple(record.blind.tolist()) for record in records}) == 3


def test_finished_rows_are_padded_while_others_continue(tiny_llava, sample_image):
    tokenizer, model, image_processor, _ = tiny_llava
    rows = [prompt_ids(tokenizer, question) for question in QUESTIONS[:2]]
    pil_images = variant_images(sample_image)[:2]
    images = images_for(model, image_processor, pil_images)
    sizes = [image.size for image in pil_images]
    ids, mask = left_padded(rows)
    free = generate(model, tokenizer, ids, images, sizes, attention_mask=mask, avc=AVCConfig())
    stop_token = int(free[0, LEAD + 1])  # row 0's second new token
    assert stop_token not in free[1, LEAD:].tolist(), "pick prompts whose rows differ"
    out = generate(model, tokenizer, ids, images, sizes, attention_mask=mask, avc=AVCConfig(),
                   eos_token_id=stop_token, pad_token_id=0, logits_processor=None)
    stop = LEAD + 2
    assert out[0, :stop].tolist() == free[0, :stop].tolist()
    assert out[0, stop:].tolist() == [0] * (out.shape[1] - stop)
    assert out[1].tolist() == free[1].tolist()


# ---------------------------------------------------------------- HF generation options


def test_sampling_is_reproducible_under_manual_seed(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(alpha=0.5, beta=0.001),
                             do_sample=True, temperature=1.5, max_new_tokens=12).tolist())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_sampling_draws_from_the_warped_plausible_set(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    torch.manual_seed(3)
    out = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(beta=0.001), do_sample=True,
                   temperature=0.7, top_k=5, top_p=0.9, return_dict_in_generate=True, output_scores=True)
    for step, scores in enumerate(out.scores):
        kept = torch.isfinite(scores[0])
        assert 1 <= int(kept.sum()) <= 5
        assert kept[out.sequences[0, LEAD + step]]


@pytest.mark.parametrize("config", [AVCConfig(alpha=0.0, beta=1e-30), VCDConfig(alpha=0.0, beta=1e-30)],
                         ids=["avc", "vcd"])
def test_repetition_penalty_is_applied_like_upstream(tiny_llava, single, config):
    """Processors run after the plausibility cutoff (official order); with a cutoff that keeps
    every token and alpha = 0, the result is upstream's penalised greedy decoding."""
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    upstream = generate(model, tokenizer, ids, images, sizes, repetition_penalty=3.0, max_new_tokens=12)
    ours = generate(model, tokenizer, ids, images, sizes, repetition_penalty=3.0, max_new_tokens=12,
                    **{config.method: config})
    assert ours.tolist() == upstream.tolist()
    unpenalised = generate(model, tokenizer, ids, images, sizes, max_new_tokens=12, **{config.method: config})
    assert ours.tolist() != unpenalised.tolist()


def test_llava_keywords_stopping_criteria_stops_generation(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    free = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(), max_new_tokens=10)
    keyword = tokenizer.decode(free[0, LEAD:LEAD + 3], skip_special_tokens=True).strip()
    assert keyword
    criteria = StoppingCriteriaList([KeywordsStoppingCriteria([keyword], tokenizer, ids)])
    out = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(), max_new_tokens=10,
                   stopping_criteria=criteria)
    assert out.shape[1] < free.shape[1]
    assert keyword in tokenizer.decode(out[0], skip_special_tokens=True)
    assert out[0].tolist() == free[0, : out.shape[1]].tolist()


@pytest.mark.parametrize("extra, message", [
    ({"num_beams": 2}, r"`num_beams` \(=2\) must be 1 with avc=: contrastive"),  # beam search: not combined
    ({"vcd": VCDConfig()}, "at most one"),  # two methods at once
    ({"bogus_option": 1}, "not used by the model"),  # an unknown generate keyword
], ids=["beam-search", "two-methods", "unknown-kwarg"])
def test_bad_generate_arguments_with_a_contrastive_method_are_errors(tiny_llava, single, extra, message):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(), **extra)


def test_contrastive_method_without_image_is_an_error(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, _, _ = single
    with pytest.raises(ValueError, match="needs an image"):
        model.generate(ids, avc=AVCConfig(), max_new_tokens=2)


def test_non_finite_biased_logits_raise_with_step_and_row(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    calls = []

    def poison_biased_rows(module, args, output):
        calls.append(output.shape[0])
        if len(calls) == 3:  # the third lm_head call is decoding step 1 over 2B rows
            output = output.clone()
            output[1:] = float("nan")
        return output

    handle = model.lm_head.register_forward_hook(poison_biased_rows)
    try:
        with pytest.raises(NonFiniteLogitsError, match=r"step 1.*rows \[0\]"):
            generate(model, tokenizer, ids, images, sizes, avc=AVCConfig())
    finally:
        handle.remove()


# ---------------------------------------------------------------- state and cost


def test_original_branch_cache_equals_a_plain_run_fed_the_same_tokens(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    avc = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(), return_dict_in_generate=True)
    new_tokens = avc.sequences[:, LEAD:]
    replay = model.generate(ids, images=images, image_sizes=sizes, do_sample=False, max_new_tokens=NEW_TOKENS,
                            logits_processor=LogitsProcessorList([ForceTokens(new_tokens, start_length=LEAD)]),
                            return_dict_in_generate=True)
    assert replay.sequences.tolist() == avc.sequences.tolist()
    assert len(replay.past_key_values) == len(avc.past_key_values)
    for (k_plain, v_plain), (k_avc, v_avc) in zip(replay.past_key_values, avc.past_key_values):
        torch.testing.assert_close(k_avc, k_plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_avc, v_plain, atol=1e-5, rtol=1e-5)


def _count_calls(module, store):
    return module.register_forward_hook(lambda mod, args, kwargs, out: store.append(kwargs.get(
        "inputs_embeds", args[0] if args else None)), with_kwargs=True)


@pytest.mark.parametrize("config", CONFIGS, ids=["avc", "vcd", "m3id"])
def test_each_step_is_one_forward_over_both_branches(tiny_llava, single, config):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    vision_calls, lm_calls = [], []
    vision = model.get_vision_tower().vision_tower
    handles = [vision.register_forward_hook(lambda *a: vision_calls.append(1)),
               _count_calls(model.get_model(), lm_calls)]
    try:
        generate(model, tokenizer, ids, images, sizes, **{config.method: config})
    finally:
        for handle in handles:
            handle.remove()
    assert len(vision_calls) == 1  # the image (and VCD's noised copy, batched) through CLIP once
    decode_calls = [embeds for embeds in lm_calls if embeds.shape[1] == 1]
    assert len(decode_calls) == NEW_TOKENS - 1
    assert all(embeds.shape[0] == 2 for embeds in decode_calls)


def test_sequential_mode_runs_two_forwards_per_token_with_the_same_tokens(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    lm_calls = []
    handle = _count_calls(model.get_model(), lm_calls)
    try:
        sequential = contrastive_generate(model, ids, images=images, image_sizes=sizes, config=AVCConfig(),
                                          sequential=True, do_sample=False, max_new_tokens=NEW_TOKENS,
                                          logits_processor=no_eos(tokenizer))
    finally:
        handle.remove()
    batched = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig())
    assert sequential.tolist() == batched.tolist()
    assert len([e for e in lm_calls if e.shape[1] == 1]) == 2 * (NEW_TOKENS - 1)


def test_find_blind_tokens_agrees_with_what_the_decoder_used(tiny_llava, single):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    config = AVCConfig(gamma=0.3, lam=0.5)
    records = llava_avc.find_blind_tokens(model, ids, images, sizes, config)
    used = generate(model, tokenizer, ids, images, sizes, avc=config, return_dict_in_generate=True).blind_tokens
    assert len(records) == len(used) == 1
    assert records[0].image_span == used[0].image_span
    assert records[0].layers == used[0].layers
    assert torch.equal(records[0].blind, used[0].blind)
    torch.testing.assert_close(records[0].scores, used[0].scores)
    assert 0 < records[0].num_blind < 576


def test_uniform_attention_makes_avc_a_no_op(tiny_llava_dir, sample_image):
    """Zero query weights give uniform attention: every image token is blind, AVC equals plain."""
    from llava_avc.testing.tiny import load_tiny

    tokenizer, model, image_processor, _ = load_tiny(tiny_llava_dir)
    for layer in model.get_model().layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    ids = prompt_ids(tokenizer, QUESTIONS[1]).unsqueeze(0)
    images = images_for(model, image_processor, [sample_image])
    sizes = [sample_image.size]
    records = llava_avc.find_blind_tokens(model, ids, images, sizes, AVCConfig())
    assert bool(records[0].blind.all())
    plain = generate(model, tokenizer, ids, images, sizes)
    avc = generate(model, tokenizer, ids, images, sizes, avc=AVCConfig(alpha=2.5))
    assert avc.tolist() == plain.tolist()


@pytest.mark.parametrize("masking", ["zeros", "ones", "noise"])
def test_biased_input_replaces_only_non_blind_image_rows(tiny_llava, single, masking):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes = single
    config = AVCConfig(masking=masking)
    merged = LlavaAdapter(model).merge_image(ids, None, images, sizes)
    records = llava_avc.find_blind_tokens(model, ids, images, sizes, config)
    biased = biased_embeds(merged.embeds, records, config)
    start, end = records[0].image_span
    blind = records[0].blind
    original_image = merged.embeds[0, start:end]
    torch.testing.assert_close(biased[0, :start], merged.embeds[0, :start], rtol=0, atol=0)
    torch.testing.assert_close(biased[0, end:], merged.embeds[0, end:], rtol=0, atol=0)
    torch.testing.assert_close(biased[0, start:end][blind], original_image[blind], rtol=0, atol=0)
    replaced = biased[0, start:end][~blind]
    if masking == "zeros":
        assert bool((replaced == 0).all())
    elif masking == "ones":
        assert bool((replaced == 1).all())
    else:
        assert abs(float(replaced.std()) - 1.0) < 0.1
        torch.testing.assert_close(biased_embeds(merged.embeds, records, config), biased, rtol=0, atol=0)
