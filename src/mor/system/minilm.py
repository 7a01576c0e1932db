"""MiniLM as routing runs it: word pieces from `tokenizers`, token states from a routing copy of the weights (the
compact BERT forward, packed), mean-pooled and normalised. A saved router loads straight from its files, so loading
one and routing never import transformers (about 3.5 s of every cold start here); training still does.
"""

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from mor.errors import MorError, check
from mor.system.bert import CompactBert
from mor.system.packed import packed
from mor.system.router_files import read_json, read_tensors, unusable


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): only then is bf16 faster than fp32."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe is not None and probe())


def inference_dtype(precision: str) -> torch.dtype:
    """The dtype routing runs MiniLM in: `auto` is bf16 where the CPU computes it natively, else fp32."""
    check(precision in {"auto", "fp32", "bf16"}, f"router.precision: {precision!r} is not one of auto, fp32, bf16")
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16())
    return torch.bfloat16 if bf16 else torch.float32


def batcher(tokenizer: Tokenizer, pad_token: str, max_tokens: int) -> Tokenizer:
    """A copy of `tokenizer` that cuts texts at `max_tokens` and pads a batch to its longest text: the word pieces of
    transformers' `tokenizer(texts, padding=True, truncation=True, max_length=max_tokens)`."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)
    return tokenizer


def tokens(tokenizer: Tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` of `texts`, (n, longest) each."""
    encodings = tokenizer.encode_batch(texts)
    return {"input_ids": torch.tensor([e.ids for e in encodings]),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings])}


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then unit norm: the sentence-transformers recipe of this model."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


class States(nn.Module):
    """A transformers model called like `CompactBert`: token states from ids and mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class MiniLMRouting:
    """The MiniLM features a router routes with: `model` maps `(input_ids, attention_mask)` to token states."""

    kind = "minilm"
    files = ("minilm",)

    def __init__(self, tokenizer: Tokenizer, model: nn.Module, dim: int, dtype: torch.dtype) -> None:
        self.tokenizer, self.model, self.dim, self.dtype = tokenizer, model, dim, dtype

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 embeddings, computed in `dtype`."""
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = tokens(self.tokenizer, texts[start:start + batch_size])
            parts.append(pool(self.model(**batch).float(), batch["attention_mask"]))
        return torch.cat(parts).numpy()

    def project(self, texts: list[str], weight: np.ndarray) -> np.ndarray:
        """`encode(texts) @ weight`: the features times a block of a linear head's weights."""
        return self.encode(texts) @ weight

    @classmethod
    def load(cls, folder: Path, max_tokens: int = 128, precision: str = "fp32") -> "MiniLMRouting":
        """The encoder a router saved in `folder/minilm`, routing in `precision`; a file that is missing, malformed
        or at odds with the others is a one-line MorError naming it."""
        path, dtype = folder / "minilm", inference_dtype(precision)
        config = read_json(path / "config.json")
        check(isinstance(config, dict) and isinstance(config.get("hidden_size"), int),
              unusable(path / "config.json", "is not a model config with a hidden_size"), MorError)
        tokenizer = _tokenizer(path / "tokenizer.json")
        tokenizer = batcher(tokenizer, _pad_token(path, tokenizer), max_tokens)
        if not CompactBert.fits(config):
            model = _library_model(path, dtype)
        else:
            try:
                model = CompactBert.from_weights(config, read_tensors(path / "model.safetensors"), dtype)
            except (KeyError, TypeError, ValueError) as e:
                raise MorError(unusable(path / "model.safetensors", f"does not fit config.json ({e})")) from None
        return cls(tokenizer, packed(model), config["hidden_size"], dtype)


def _tokenizer(path: Path) -> Tokenizer:
    """A saved `tokenizer.json`, or a one-line MorError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MorError(unusable(path, f"cannot be read ({e})")) from None
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises plain Exception for a malformed file
        raise MorError(unusable(path, f"is not a tokenizer ({e})")) from None


def _pad_token(path: Path, tokenizer: Tokenizer) -> str:
    """The padding token named in `tokenizer_config.json`, checked against the tokenizer's vocabulary."""
    pad = read_json(path / "tokenizer_config.json")
    pad = pad.get("pad_token") if isinstance(pad, dict) else None
    pad = pad.get("content") if isinstance(pad, dict) else pad
    check(isinstance(pad, str) and tokenizer.token_to_id(pad) is not None,
          unusable(path / "tokenizer_config.json", f"names no pad_token of the tokenizer (has {pad!r})"), MorError)
    return pad


def _library_model(path: Path, dtype: torch.dtype) -> States:
    """transformers' own model, for a saved model that the compact forward does not fit."""
    from transformers import AutoModel

    try:
        return States(AutoModel.from_pretrained(str(path), local_files_only=True).to(dtype).eval())
    except (OSError, ValueError) as e:
        raise MorError(unusable(path, f"cannot be loaded ({e})")) from None
