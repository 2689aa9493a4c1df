"""`circuitdb explainer serve`: a minimal OpenAI-compatible chat endpoint over a local model.

Enough of the API for `--explainer http://host:port/v1` (ours or any client's chat completions at
temperature 0): POST /v1/chat/completions answers the last user message, GET /v1/models names the model.
Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from circuitdb.explanations.chat import LocalChatModel


def make_app(model: LocalChatModel) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model.name, "object": "model"}]})

    async def completions(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            prompt = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
            max_tokens = int(body.get("max_tokens") or 64)
        except (ValueError, KeyError, IndexError, TypeError):
            return JSONResponse({"error": {"message": "expected messages with a user turn"}}, status_code=400)
        (answer,) = model.reply([prompt], max_tokens)
        message = {"role": "assistant", "content": answer}
        return JSONResponse(
            {
                "id": f"chatcmpl-{time.time_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        )

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", completions, methods=["POST"])])


def serve(model: LocalChatModel, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(make_app(model), host=host, port=port, log_level="warning")
