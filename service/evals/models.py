"""How an eval worker reaches a model: the vLLM servers of its base (a base model, or one of
the project's `ft:` models and checkpoints, which vLLM resolves itself), or, for judges
Tailor does not serve, the OpenAI-compatible endpoint the operator configured.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.registry import BaseModelSpec
from service.core.settings import Settings
from service.core.topology import upstreams
from service.jobs.catalog import base_of


class GenerationError(Exception):
    """A generation that did not come back: the item counts as errored, the run goes on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: dict[str, int]


class ModelClient:
    def __init__(self, settings: Settings, base_models: dict[str, BaseModelSpec], sessionmaker: async_sessionmaker[AsyncSession]):
        self.base_models = base_models
        self.sessionmaker = sessionmaker
        self.replicas = {name: itertools.cycle(urls) for name, urls in upstreams(settings, base_models).items()}
        timeout = httpx.Timeout(settings.inference_timeout_seconds, connect=settings.inference_connect_timeout_seconds)
        headers = {"Authorization": f"Bearer {settings.inference_api_key}"} if settings.inference_api_key else {}
        # Enough connections for every run's concurrency on one worker (max_jobs runs at once).
        limits = httpx.Limits(
            max_connections=settings.eval_concurrency * 8, max_keepalive_connections=settings.eval_concurrency * 8
        )
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits)
        self.judge_url = settings.judge_base_url.rstrip("/") if settings.judge_base_url else None
        self.judge_headers = {"Authorization": f"Bearer {settings.judge_api_key}"} if settings.judge_api_key else {}

    async def base_of(self, project_id: str, model: str) -> str | None:
        if model in self.base_models:  # no database round trip for the common case
            return model
        async with self.sessionmaker() as session:
            return await base_of(session, project_id, model, self.base_models)

    async def chat(self, project_id: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Completion:
        base = await self.base_of(project_id, model)
        if base is not None:
            url, headers = f"{next(self.replicas[base])}/v1/chat/completions", {}
        elif self.judge_url is not None:
            url, headers = f"{self.judge_url}/chat/completions", self.judge_headers
        else:
            raise GenerationError("model_not_found", f"The model '{model}' does not exist or you do not have access to it.")
        body: dict[str, Any] = {"model": model, "messages": messages}
        for key, value in sampling.items():
            body["max_tokens" if key == "max_completion_tokens" and base is not None else key] = value
        try:
            response = await self.http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise GenerationError("inference_unavailable", f"The model server for '{model}' did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise GenerationError("inference_error", f"The model server answered {response.status_code}: {response.text[:500]}")
        answer = response.json()
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage={k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        )

    async def reachable(self, base_model: str) -> bool:
        """Whether a vLLM server of `base_model` answers now (else evaluations are skipped)."""
        if base_model not in self.replicas:
            return False
        try:
            response = await self.http.get(f"{next(self.replicas[base_model])}/v1/models", timeout=3.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self.http.aclose()
