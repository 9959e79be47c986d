"""The tokenizer files of a llava-hf directory: tokenizer.json built from the sentencepiece model itself,
its config and special-token map (docs/llava-hf-format.md, "Tokenizer")."""

from __future__ import annotations

from pathlib import Path

from ....errors import UserError
from .config import write_json
from .parts import IMAGE_TOKEN, LLAVA_V1_CHAT_TEMPLATE, PAD_TOKEN, LlavaHFParts


def _spm_vocab_and_merges(sp) -> tuple:
    """BPE ``vocab`` (piece -> id) and ``merges`` [(left, right)] of a sentencepiece BPE model.

    Merges are ordered by the score of the merged piece (highest first), the splits of one piece
    by the ids of their halves: sentencepiece's BPE applies the best-scoring merge first.
    """
    size = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    mergeable = [i for i in range(size) if not (sp.is_unknown(i) or sp.is_control(i)
                                                 or sp.is_byte(i) or sp.is_unused(i))]
    merges = []
    for i in sorted(mergeable, key=lambda i: (-sp.get_score(i), i)):
        piece = sp.id_to_piece(i)
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                  if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    return vocab, merges


def build_hf_tokenizer(spm_proto: bytes, added_tokens=(), add_bos_token: bool = True):
    """A ``tokenizers.Tokenizer`` equivalent to the sentencepiece model (docs/llava-hf-format.md, "Tokenizer").

    ``added_tokens``: ``[(content, special)]`` appended after the pieces, ids in order. Returns
    ``(tokenizer, (unk, bos, eos))``. The unknown and control pieces (``<unk>``, ``<s>``, ``</s>``)
    become special added tokens; sentencepiece USER_DEFINED pieces (none in LLaMA's tokenizer) are
    not treated specially.
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_proto=spm_proto)
    if sp.unk_id() < 0 or sp.bos_id() < 0 or sp.eos_id() < 0:
        raise UserError("tokenizer.model lacks an <unk>, <s> or </s> piece (unk/bos/eos id -1); "
                        "a LLaMA-style sentencepiece model is required")
    vocab, merges = _spm_vocab_and_merges(sp)
    unk, bos, eos = sp.id_to_piece(sp.unk_id()), sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    controls = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in controls])
    for content, special in added_tokens:
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    if add_bos_token:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())])
    return tok, (unk, bos, eos)


def _added_tokens_decoder(tok) -> dict:
    """tokenizer_config.json's ``added_tokens_decoder`` for every added token of ``tok``."""
    return {
        str(index): {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                     "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}
        for index, token in sorted(tok.get_added_tokens_decoder().items())
    }


def write_tokenizer(parts: LlavaHFParts, out_dir: Path) -> dict:
    """Write the tokenizer files; return ``{"image": id, "pad": id, "bos", "eos", "size"}``."""
    pad = parts.pad_token or PAD_TOKEN
    present = {content for content, _ in parts.added_tokens}
    extra = list(parts.added_tokens) + [(token, True) for token in (IMAGE_TOKEN, pad) if token not in present]
    tok, (unk, bos, eos) = build_hf_tokenizer(parts.spm_proto, extra, parts.add_bos_token)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer.model").write_bytes(parts.spm_proto)
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": parts.model_max_length,
        "padding_side": "left",
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids (generate rejects them)
        "clean_up_tokenization_spaces": False,
        "chat_template": LLAVA_V1_CHAT_TEMPLATE,
        "added_tokens_decoder": _added_tokens_decoder(tok),
    }
    write_json(out_dir / "tokenizer_config.json", config)
    write_json(out_dir / "special_tokens_map.json", specials)
    ids = {"image": tok.token_to_id(IMAGE_TOKEN), "pad": tok.token_to_id(pad),
           "bos": tok.token_to_id(bos), "eos": tok.token_to_id(eos), "size": tok.get_vocab_size()}
    if ids["pad"] is None:
        raise UserError(f"pad token {pad!r} is not in the vocabulary; remove it from the tokenizer "
                        f"config so that {PAD_TOKEN} is added")
    return ids


