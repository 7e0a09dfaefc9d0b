"""Build the miniworld's sub-word tokenizer: a byte-level BPE with CLIP's pre-tokenization.

Trained on the world's captions plus a general English word list, so that unseen words and
misspellings split into known pieces (never one unknown token), and saved as a plain
`CLIPTokenizer` that loads with the pipeline, offline.
"""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from .concepts import IMPLICIT_PHRASE, INSTANCES, MEMORIZED, STYLES
from .world import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, caption, sample_scene

# CLIP's pre-tokenization: words, single digits, runs of punctuation; lower-cased.
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32
VOCAB_SIZE = 6000


def corpus(seed: int = 0, n_captions: int = 30000) -> list[str]:
    rng = np.random.default_rng([seed, 7])
    lines = [caption(sample_scene(rng), rng, held_out=bool(rng.random() < 0.3)) for _ in range(n_captions)]
    lines += list(TRAIN_TEMPLATES) + list(HELD_OUT_TEMPLATES) + [IMPLICIT_PHRASE]
    lines += [m.caption for m in MEMORIZED.values()]
    lines += [p for m in MEMORIZED.values() for p in m.paraphrases + m.title_variants]
    lines += list(STYLES) + list(INSTANCES)
    try:
        from english_words import get_english_words_set
    except ImportError as exc:  # only needed to rebuild the tokenizer, not to use it
        raise RuntimeError("building the tokenizer needs the 'english-words' package: "
                           "pip install 'erasure[train]'") from exc
    lines += sorted(get_english_words_set(["web2"], lower=True, alpha=True))
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> CLIPTokenizer:
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS, EOS],
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()), end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(seed), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Every byte also as a word-final piece, as in CLIP's vocabulary, so any text encodes.
    tokens = set(model["vocab"]) | {ch + "</w>" for ch in pre_tokenizers.ByteLevel.alphabet()}
    return make_tokenizer(tokens, merges)


def make_tokenizer(tokens: set[str], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    """A CLIPTokenizer with canonical ids: the specials, then every other token sorted.

    The BPE trainer numbers tokens in hash-map order, which changes from process to process; sorted
    ids make a rebuild give the same ids. (It also breaks ties between equally frequent merges in
    that order, so a rebuild may order a few tied merges differently: same merges, same encodings
    of the world's captions; the shipped tokenizer is the one the model was trained with.)
    """
    vocab = {BOS: 0, EOS: 1}
    for tok in sorted(tokens - {BOS, EOS}):
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), bos_token=BOS, eos_token=EOS, unk_token=EOS,
                         pad_token=EOS, model_max_length=MAX_LENGTH)
