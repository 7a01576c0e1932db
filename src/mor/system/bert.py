"""BERT's encoder forward in a dozen lines, for routing: the weights of a transformers `BertModel`, with query, key
and value fused into one product and none of the library's per-call bookkeeping.

A routed request is a few dozen tokens, so MiniLM's forward is dominated by calls, not arithmetic; this forward
makes 4 products per layer instead of 6 and a handful of Python calls per layer instead of dozens. It is the
inference copy only: training and fine-tuning run the library's model.
"""

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    """One post-norm transformer layer of BERT: attention, then a GELU feed-forward, each added and normalised."""

    def __init__(self, layer: nn.Module, heads: int) -> None:
        super().__init__()
        attention = layer.attention
        self.heads = heads
        self.qkv = _fused(attention.self.query, attention.self.key, attention.self.value)
        self.out, self.attention_norm = attention.output.dense, attention.output.LayerNorm
        self.up, self.down, self.norm = layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(n, t, -1)
        x = self.attention_norm(x + self.out(attended))
        return self.norm(x + self.down(F.gelu(self.up(x))))


class CompactBert(nn.Module):
    """`bert`'s token states for single-segment inputs (token type 0), computed with `bert`'s own weights."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        embeddings, config = bert.embeddings, bert.config
        self.words, self.positions = embeddings.word_embeddings, embeddings.position_embeddings
        self.segment = nn.Parameter(embeddings.token_type_embeddings.weight[0].detach(), requires_grad=False)
        self.norm = embeddings.LayerNorm
        self.blocks = nn.ModuleList(Block(layer, config.num_attention_heads) for layer in bert.encoder.layer)

    @staticmethod
    def fits(bert: nn.Module) -> bool:
        """Whether `bert` is a BERT this forward computes exactly: absolute positions, exact GELU, encoder only."""
        config = getattr(bert, "config", None)
        return (getattr(config, "model_type", None) == "bert" and config.hidden_act == "gelu"
                and getattr(config, "position_embedding_type", "absolute") == "absolute" and not config.is_decoder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, tokens, hidden) states; masked (padding) tokens are not attended to."""
        x = self.norm(self.words(input_ids) + self.positions.weight[:input_ids.shape[1]] + self.segment)
        keep = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        for block in self.blocks:
            x = block(x, keep)
        return x


def _fused(*linears: nn.Linear) -> nn.Linear:
    """One linear layer computing `linears` side by side (their outputs concatenated)."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(torch.cat([linear.bias.detach() for linear in linears]))
    return fused
