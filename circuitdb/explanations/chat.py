"""Chat models that write and judge explanations: a local causal LM, or any OpenAI-compatible endpoint.

Both answer a batch of single-turn prompts with greedy decoding, so an explanation is reproducible
for a given model and prompt. The local one uses the tokenizer's chat template when it has one
(the embedded SmolLM2-135M-Instruct does) and runs batched on the model's device.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch

from circuitdb.errors import CircuitDBError
from circuitdb.models import LoadedModel


class ChatModel(Protocol):
    name: str
    """What explanations record as their explainer (a model spec, or an endpoint's URL and model)."""

    def reply(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """One answer per prompt (a single user turn each), decoded greedily."""
        ...


class LocalChatModel:
    """A causal LM loaded here (the embedded model, a .gguf file, an HF directory)."""

    def __init__(self, lm: LoadedModel, batch_size: int = 8) -> None:
        self.lm, self.batch_size, self.name = lm, batch_size, lm.name

    def _text(self, prompt: str) -> str:
        tokenizer = self.lm.tokenizer
        if tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt + "\n"

    @torch.no_grad()
    def reply(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        tokenizer = self.lm.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if tokenizer.pad_token is None:  # padded rows are masked out: any token will do
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
        pad = tokenizer.pad_token_id
        answers = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self._text(p) for p in prompts[start : start + self.batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(self.lm.device) for k, v in batch.items()}
            out = self.lm.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )  # [batch, prompt + new]
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        return answers


class EndpointChatModel:
    """An OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, `circuitdb explainer serve`) at `url`
    (its `/v1` base), asked one prompt per request at temperature 0, `concurrency` requests at a time (such
    servers batch concurrent requests)."""

    def __init__(self, url: str, model: str = "", timeout: float = 120.0, concurrency: int = 8) -> None:
        self.url, self.model, self.timeout, self.concurrency = url.rstrip("/"), model, timeout, concurrency
        self.name = f"{self.url}#{model}" if model else self.url

    def check(self) -> None:
        """Fail now, with one line, when nothing answers at the URL (GET /models: every such server has it),
        rather than after the work that precedes the first question."""
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise CircuitDBError(f"explainer endpoint {self.url}: {getattr(exc, 'reason', exc)}") from None

    def _ask(self, prompt: str, max_new_tokens: int) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_new_tokens,
            "temperature": 0,
        }
        request = urllib.request.Request(
            f"{self.url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
            return answer["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, OSError) as exc:
            raise CircuitDBError(f"explainer endpoint {self.url}: {getattr(exc, 'reason', exc)}") from None
        except (KeyError, IndexError, TypeError, json.JSONDecodeError):
            raise CircuitDBError(f"explainer endpoint {self.url}: not an OpenAI-compatible chat answer") from None

    def reply(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._ask, prompts, [max_new_tokens] * len(prompts)))


def chat_model(spec: str, endpoint_model: str = "", device: str = "auto") -> ChatModel:
    """The chat model `spec` names: an OpenAI-compatible URL (…/v1), or a model to load here."""
    if spec.startswith(("http://", "https://")):
        endpoint = EndpointChatModel(spec, endpoint_model)
        endpoint.check()
        return endpoint
    from circuitdb.models import load_model

    return LocalChatModel(load_model(spec, device))
