"""Tokenizers built in code for the tiny builds (no files, no downloads): CLIP's byte-level BPE, T5's Unigram
(also UMT5's) and Qwen2's byte-level BPE, each knowing `VOCABULARY` as whole words and everything else
character by character.
"""

from __future__ import annotations

from typing import Any

# Words every tiny tokenizer knows as single tokens: the tiny prompts plus the words of QwenImagePipeline's prompt
# template (so that the template tokenizes like the real Qwen2 tokenizer: see `QWEN_TEMPLATE_PREFIX_TOKENS`).
# Anything else still tokenizes, character by character (byte-level BPE, or T5's single-character pieces).
VOCABULARY = (
    "a", "an", "and", "assistant", "background", "blue", "blurry", "by", "cat", "color", "describe", "detailing",
    "dog", "forest", "fox", "green", "image", "in", "low", "objects", "of", "on", "photo", "quality", "quantity",
    "red", "relationships", "running", "shape", "size", "snow", "spatial", "system", "text", "texture", "the",
    "user", "video", "with",
)
CLIP_MAX_LENGTH = 16  # the pipelines pad CLIP input to tokenizer.model_max_length: keep it short
# QwenImagePipeline drops the first prompt_template_encode_start_idx (34) hidden states: the template's prefix is 34
# tokens with the real Qwen2 tokenizer (<|im_start|> system \n Describe ... background : <|im_end|> \n
# <|im_start|> user \n); the tiny tokenizer must give the same count or it would drop prompt tokens.
QWEN_TEMPLATE_PREFIX_TOKENS = 34


def _byte_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> printable character table

    return list(bytes_to_unicode().values())


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: merge the lowest-ranked adjacent pair until none is left (what `tokenizers` does)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _whole_word_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """BPE merges that turn each word (a list of initial symbols) into one token.

    Left-to-right chains, longest words first; a chain that another word's merge interrupts gets one more merge
    joining the pieces it ends with (appended, so it never disturbs the others), until every word is whole.
    """
    merges: list[tuple[str, str]] = []
    for word in sorted(words, key=lambda w: (-len(w), w)):
        left = word[0]
        for nxt in word[1:]:
            if (left, nxt) not in merges:
                merges.append((left, nxt))
            left += nxt
    for _ in range(10):
        ranks = {pair: i for i, pair in enumerate(merges)}
        broken = [pieces for pieces in (_apply_bpe(w, ranks) for w in words) if len(pieces) > 1]
        if not broken:
            return merges
        for pieces in broken:
            left = pieces[0]
            for nxt in pieces[1:]:
                if (left, nxt) not in merges:
                    merges.append((left, nxt))
                left += nxt
    raise RuntimeError("could not build whole-word BPE merges for the tiny vocabulary")


def _merged_vocab(alphabet: list[str], merges: list[tuple[str, str]], specials: list[str]) -> dict[str, int]:
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in specials:
        vocab[special] = len(vocab)
    return vocab


def build_clip_tokenizer() -> Any:
    """CLIP's byte-level BPE (lower-case words, end-of-word marker `</w>`), every vocabulary word one token."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    alphabet = alphabet + [ch + "</w>" for ch in alphabet]
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in VOCABULARY]
    merges = _whole_word_merges(words)
    vocab = _merged_vocab(alphabet, merges, ["<|startoftext|>", "<|endoftext|>"])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = CLIP_MAX_LENGTH
    return tokenizer


def build_t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer: one piece per vocabulary word, single characters as the fallback. Also serves
    UMT5 (Wan), whose real tokenizer is the same SentencePiece kind with a larger vocabulary."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in VOCABULARY]
    pieces.append(("\u2581", -5.0))
    pieces += [(ch, -8.0) for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;'!?-"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.model_max_length = 512
    return tokenizer


def build_qwen2_tokenizer() -> Any:
    """Qwen2's byte-level BPE (GPT-2 alphabet, `Ġ` marks a leading space) with whole-word merges for the
    vocabulary, in both the plain and the space-prefixed form, and the chat-template special tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    space = "\u0120"  # 'Ġ': GPT-2's printable form of the space byte
    words: list[list[str]] = []
    for word in VOCABULARY:
        for form in (word, word.capitalize()):
            words.append(list(form))
            words.append([space, *form])
    merges = _whole_word_merges(words)
    vocab = _merged_vocab(_byte_alphabet(), merges, ["<|endoftext|>"])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    chat_tokens = [AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")]
    tokenizer.add_tokens(chat_tokens, special_tokens=True)
    return tokenizer
