"""A CLIP tokenizer built in memory, offline: the 256 byte symbols, their end-of-word forms and a
few merges, with CLIP's special tokens. Real CLIP vocabularies have 49,408 tokens; tiny text
encoders only need the format."""

from __future__ import annotations

from typing import Any

#: Words that get merge chains, so common prompts tokenize to few tokens.
WORDS = ("a", "photo", "of", "sks", "person", "portrait", "face", "dslr", "make", "it", "the")


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode mapping, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_tiny_tokenizer(model_max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` of about 550 tokens; pad token = end of text, as in SD 1.x."""
    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        current = word[0]
        for index, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if index == len(word) - 1 else "")
            merges.append((current, right))
            current += right
            if current not in vocab_list:
                vocab_list.append(current)
        if len(word) == 1 and word + "</w>" not in vocab_list:
            vocab_list.append(word + "</w>")
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    unique_merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(
        vocab=vocab,
        merges=unique_merges,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
