"""Loading tokenizers the same way everywhere (fast tokenizers only, no baked-in padding)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.core.errors import DistillInputError

# The files a Hugging Face tokenizer may be saved as (a sentencepiece model besides: *.model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt")


def is_tokenizer_file(path: Path) -> bool:
    """Whether a file of a model directory belongs to its tokenizer."""
    return path.name in TOKENIZER_FILES or path.suffix == ".model"


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """A fast tokenizer with any padding or truncation stored in tokenizer.json switched off."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DistillInputError(f"{path}: could not load a tokenizer: {exc}".replace("\n", " ")) from exc
    if not tokenizer.is_fast:
        raise DistillInputError(f"{path}: distill needs a fast (Rust) tokenizer with tokenizer.json")
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    return tokenizer
