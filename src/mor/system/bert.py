"""BERT's encoder forward in a dozen lines, for routing: a transformers `BertModel`'s weights, with query, key and
value fused into one product and none of the library's per-call bookkeeping.

A routed request is a few dozen tokens, so MiniLM's forward is dominated by calls, not arithmetic; this forward
makes 4 products per layer instead of 6 and a handful of Python calls per layer instead of dozens. It is built
from a `config.json` and weights named as in transformers (from a saved folder or a live model), so a trained
router routes without importing transformers. It is the inference copy only: training runs the library's model.
"""

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

SUBLAYERS = {"out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
             "up": "intermediate.dense", "down": "output.dense", "norm": "output.LayerNorm"}  # ours: transformers'


class Block(nn.Module):
    """One post-norm transformer layer of BERT: attention, then a GELU feed-forward, each added and normalised."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.up, self.down = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.attention_norm, self.norm = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(n, t, -1)
        x = self.attention_norm(x + self.out(attended))
        return self.norm(x + self.down(F.gelu(self.up(x))))


class CompactBert(nn.Module):
    """A BERT's token states for single-segment inputs (token type 0); `config` is its `config.json` as a dict."""

    def __init__(self, config: Mapping) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.words = nn.Embedding(config["vocab_size"], hidden)
        self.positions = nn.Embedding(config["max_position_embeddings"], hidden)
        self.segment = nn.Parameter(torch.zeros(hidden), requires_grad=False)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.blocks = nn.ModuleList(Block(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
                                    for _ in range(config["num_hidden_layers"]))

    @classmethod
    def from_weights(cls, config: Mapping, weights: Mapping[str, torch.Tensor],
                     dtype: torch.dtype = torch.float32) -> "CompactBert":
        """The model with `weights` (named as in transformers' `BertModel`), copied in `dtype`; a missing weight or a
        wrong shape is a ValueError naming it."""
        model = cls(config).to(dtype)
        try:
            model.load_state_dict(_renamed(weights, len(model.blocks)))
        except RuntimeError as e:
            raise ValueError(" ".join(str(e).split())) from None
        return model.eval()

    @classmethod
    def from_model(cls, bert: nn.Module, dtype: torch.dtype = torch.float32) -> "CompactBert":
        """A routing copy of a live transformers `BertModel`, in `dtype`."""
        return cls.from_weights(bert.config.to_dict(), bert.state_dict(), dtype)

    @staticmethod
    def fits(config: Mapping) -> bool:
        """Whether `config` describes a BERT this forward computes exactly: absolute positions, exact GELU, encoder
        only."""
        return (config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
                and config.get("position_embedding_type", "absolute") == "absolute" and not config.get("is_decoder"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, tokens, hidden) states; masked (padding) tokens are not attended to."""
        x = self.norm(self.words(input_ids) + self.positions.weight[:input_ids.shape[1]] + self.segment)
        keep = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        for block in self.blocks:
            x = block(x, keep)
        return x


def _renamed(weights: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers' BERT weights under this module's names, query, key and value stacked into one."""
    weights = {name.removeprefix("bert."): w for name, w in weights.items()}

    def get(name: str) -> torch.Tensor:
        if name not in weights:
            raise ValueError(f"the weights lack {name!r}")
        return weights[name]

    state = {"words.weight": get("embeddings.word_embeddings.weight"),
             "positions.weight": get("embeddings.position_embeddings.weight"),
             "segment": get("embeddings.token_type_embeddings.weight")[0],
             "norm.weight": get("embeddings.LayerNorm.weight"), "norm.bias": get("embeddings.LayerNorm.bias")}
    for i in range(layers):
        layer = f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            state[f"blocks.{i}.qkv.{p}"] = torch.cat([get(f"{layer}attention.self.{n}.{p}")
                                                    for n in ("query", "key", "value")])
            state.update({f"blocks.{i}.{ours}.{p}": get(f"{layer}{theirs}.{p}") for ours, theirs in SUBLAYERS.items()})
    return state
