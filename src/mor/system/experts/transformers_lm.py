"""An expert that is a local Hugging Face causal language model, loaded from a folder and run off the event loop."""

from pathlib import Path

import torch
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer

from mor.errors import ConfigError, check, first_line
from mor.system.experts.base import Expert, ExpertInfo
from mor.system.experts.confidence import from_logprobs
from mor.system.experts.errors import RequestError
from mor.system.request import Answer, Cost, Request


class TransformersExpert(Expert):
    """A causal LM saved with `save_pretrained` in `path` (never downloaded: local files only).

    The prompt is the tokenizer's chat template applied to the request's messages when it has one, else the
    messages' text joined by newlines. Decoding is greedy, so the same request gives the same answer; confidence
    is the geometric mean of the generated tokens' probabilities. Generation runs in a worker thread. A prompt that
    leaves less than `max_new_tokens` of the model's context is refused as a RequestError (the request's fault).
    """

    def __init__(self, info: ExpertInfo, path: str | Path, *, max_new_tokens: int = 64, device: str = "cpu") -> None:
        super().__init__(info)
        path = Path(path)
        check(max_new_tokens >= 1, f"expert {info.name}: max_new_tokens must be ≥ 1, got {max_new_tokens}")
        check(path.is_dir(), f"expert {info.name}: model folder {path} does not exist; point path at a folder "
                             f"written by save_pretrained")
        check(usable_device(device), f"expert {info.name}: device {device!r} is not one this machine has; use "
                                     f"'cpu', or 'cuda:N' for a GPU that is there")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        except Exception as err:  # transformers raises OSError, ValueError, KeyError… for a folder that is no model
            raise ConfigError(f"expert {info.name}: {path} is not a Hugging Face causal LM ({first_line(err)}); "
                              f"point path at a folder written by save_pretrained") from None
        self.max_new_tokens, self.device = max_new_tokens, device
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        check(self.context is None or max_new_tokens < self.context,
              f"expert {info.name}: max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
              f"context of {self.context}; lower it")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id

    def prompt_ids(self, request: Request) -> torch.Tensor:
        """The prompt's token ids, (1, n): chat template when the tokenizer has one, else plain text. Messages the
        template refuses (a system role Gemma's does not take, roles that do not alternate) are the request's fault."""
        if self.tokenizer.chat_template:
            try:
                text = self.tokenizer.apply_chat_template(list(request.text_messages), add_generation_prompt=True,
                                                          tokenize=False)
            except TemplateError as err:
                raise RequestError(f"expert {self.name}: the model's chat template refuses these messages "
                                   f"({first_line(err)}); send them as the model's template expects") from None
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        return self.tokenizer(request.text, return_tensors="pt").input_ids

    async def _answer(self, request: Request) -> Answer:
        ids = self.prompt_ids(request)
        if self.context is not None and ids.shape[1] + self.max_new_tokens > self.context:
            raise RequestError(f"expert {self.name}: prompt of {ids.shape[1]} tokens plus max_new_tokens "
                               f"{self.max_new_tokens} exceeds the model's context of {self.context}; shorten it")
        new, logprobs = await self.in_thread(self._generate, ids)
        return Answer(expert=self.name, text=self.tokenizer.decode(new, skip_special_tokens=True),
                      confidence=from_logprobs(logprobs, 0.0),
                      cost=Cost(tokens_in=ids.shape[1], tokens_out=len(new)))

    @torch.no_grad()
    def _generate(self, ids: torch.Tensor) -> tuple[list[int], list[float]]:
        """Greedy continuation of `ids`: the new token ids and each one's log-probability."""
        ids = ids.to(self.device)
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, output_scores=True, return_dict_in_generate=True,
                                  pad_token_id=self.pad_id)
        scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        return out.sequences[0, ids.shape[1]:].tolist(), scores.tolist()


def usable_device(device: str) -> bool:
    """Whether torch can put a model on `device` here: 'cpu', or a CUDA (or MPS) device that is present."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    if where.type == "cuda":
        return torch.cuda.is_available() and (where.index or 0) < torch.cuda.device_count()
    return where.type == "cpu" or (where.type == "mps" and torch.backends.mps.is_available())
