"""Text -> token tensors for the zoo's text models (``embed``), at run time.

Uses only the ``tokenizers`` package (a Rust WordPiece implementation) and the
``<name>.tokenizer.json`` the zoo ships next to the model, so nothing is
downloaded and no torch/transformers is needed.  ``tokenizers`` is imported
lazily: agents that never see text do not need it.

    enc = encode(["A satellite orbits the Earth."], "models/embed.tokenizer.json")
    # {"input_ids": int64 [1, 8], "attention_mask": int64 [1, 8]}

The result feeds the model directly (``session.run(None, enc)``), or goes into
a task as ``{name: array.tolist()}``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

#: all-MiniLM-L6-v2 was trained on sequences of at most 256 word pieces
#: (sentence-transformers' max_seq_length); its position table ends at 512.
DEFAULT_MAX_LEN = 256
HARD_MAX_LEN = 512
MAX_TEXTS = 256

_cache: dict[tuple[str, int], object] = {}
_lock = threading.Lock()


class TextError(ValueError):
    """Text input that cannot be tokenised (wrong type, empty batch, ...)."""


def _tokenizer(path: Path, max_len: int):
    key = (str(Path(path).resolve()), max_len)
    with _lock:
        tok = _cache.get(key)
        if tok is None:
            try:
                from tokenizers import Tokenizer
            except ModuleNotFoundError:
                raise RuntimeError(
                    "text input needs the 'tokenizers' package (pip install tokenizers)"
                ) from None
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises plain Exception subclasses
                raise RuntimeError(f"tokenizer {path} cannot be loaded: {exc}") from None
            # The shipped file pads every text to a fixed 128; we pad a batch
            # only to its longest member and truncate at max_len instead.
            tok.enable_truncation(max_len)
            pad_id = tok.token_to_id("[PAD]")
            tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
            _cache[key] = tok
        return tok


def encode(
    texts: str | Sequence[str], tokenizer_path: str | Path, max_len: int = DEFAULT_MAX_LEN,
    with_token_type_ids: bool = False,
) -> dict[str, np.ndarray]:
    """Tokenise ``texts`` into ``input_ids`` and ``attention_mask``, int64 [N, L].

    L is the longest text's length in word pieces (with [CLS] and [SEP]),
    capped at ``max_len``; shorter rows are padded with [PAD] (mask 0).
    ``token_type_ids`` (all zero for single sentences) is added on request,
    for models exported with that input; the zoo's ``embed`` has none.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TextError("texts: expected a string or a list of strings")
    if not texts:
        raise TextError("texts: empty list")
    if len(texts) > MAX_TEXTS:
        raise TextError(f"texts: {len(texts)} texts exceed the limit of {MAX_TEXTS}")
    if not (isinstance(max_len, int) and 2 <= max_len <= HARD_MAX_LEN):
        raise TextError(f"max_len must be an integer in 2..{HARD_MAX_LEN}, got {max_len!r}")
    encodings = _tokenizer(Path(tokenizer_path), max_len).encode_batch(list(texts))
    out = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    if with_token_type_ids:
        out["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    return out
