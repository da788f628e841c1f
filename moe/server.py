"""`mlxstore serve`: mlx_lm.server's HTTP API over a store, plus Anthropic's /v1/messages.

mlx_lm.server does the work (request parsing, chat templates, tool-call and reasoning
parsing, logprobs, stop words, its LRU prompt cache, batching); this module changes only
what a store needs: the model comes from `moe.load` (its `ModelProvider` hands it out
whatever name a client asks for), each request is admitted against a bounded queue (a
full one answers 503 with Retry-After), prompts longer than `max_context` (the KV cache
the memory plan reserved) are refused with 400, and `/v1/messages` is translated to and
from chat completions (moe/anthropic.py).

A model whose experts stream serves one generation at a time (batching distinct prompts
would share one disk); one whose experts all fit, or that has none, uses mlx-lm's batching.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import threading
from argparse import Namespace
from dataclasses import dataclass, replace
from http.server import ThreadingHTTPServer
from types import SimpleNamespace

from mlxstore.mlxlm import LRUPromptCache, make_prompt_cache
from mlxstore.mlxlm import server as mls

from . import anthropic, record
from .load import plan_of
from .plan import DEFAULT_MAX_CONTEXT, MAX_PREFILL_STEP

log = logging.getLogger("mlxstore")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    queue_size: int = 8  # requests waiting behind the running one(s); more get 503
    max_context: int = DEFAULT_MAX_CONTEXT
    max_tokens: int = 512
    temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    prompt_cache_size: int = 10  # distinct sequences mlx-lm's LRU prompt cache keeps
    prompt_cache_bytes: int = 0  # 0: no prefix cache
    prefill_step_size: int | None = None  # None: the memory plan's step (moe.plan_of(model).prefill_step_size)
    decode_concurrency: int = 8
    chat_template_args: dict | None = None
    retry_after_s: int = 5


def mode_of(model) -> str:
    """'batched' when nothing streams from disk (no experts, or every expert in a slot), else 'sequential'."""
    plan = plan_of(model)
    streamed = plan is not None and plan.slots_per_layer < plan.num_experts
    batchable = all(hasattr(c, "merge") for c in make_prompt_cache(model))
    return "sequential" if streamed or not batchable else "batched"


def _cli_args(o: ServeOptions, name: str) -> Namespace:
    """The argparse namespace mlx_lm.server's classes read their settings from."""
    return Namespace(
        model=name, adapter_path=None, draft_model=None, num_draft_tokens=3, trust_remote_code=False,
        chat_template="", use_default_chat_template=False, temp=o.temp, top_p=o.top_p, top_k=o.top_k,
        min_p=o.min_p, max_tokens=o.max_tokens, chat_template_args=o.chat_template_args or {},
        decode_concurrency=o.decode_concurrency, prompt_concurrency=min(8, o.decode_concurrency),
        prefill_step_size=o.prefill_step_size, prompt_cache_size=o.prompt_cache_size,
        prompt_cache_bytes=o.prompt_cache_bytes or None, kv_bits=None, kv_group_size=64,
        quantized_kv_start=0, pipeline=False, allowed_origins=[],
    )  # fmt: skip


class StoreProvider(mls.ModelProvider):
    """One already-loaded model, served under whatever model name a request gives."""

    def __init__(self, cli_args: Namespace, model, tokenizer, batched: bool):
        super().__init__(cli_args)
        self.model, self.tokenizer, self.is_batchable = model, tokenizer, batched
        self.model_key = (cli_args.model, None, None)

    def load(self, model_path, adapter_path=None, draft_model_path=None):
        if adapter_path is not None:
            raise ValueError("adapters are not supported by mlxstore serve")
        return self.model, self.tokenizer


@dataclass
class ServerState:
    generator: mls.ResponseGenerator
    options: ServeOptions
    name: str
    mode: str
    slots: threading.BoundedSemaphore


class _AnthropicWriter:
    """Stands in for the handler's wfile: mlx_lm.server's chat-completion answer (headers
    included) comes in, Anthropic's comes out."""

    def __init__(self, real, model: str, input_tokens: int):
        self.real, self.model = real, model
        self.stream = anthropic.StreamTranslator(model, input_tokens)
        self.buf, self.status, self.streaming = b"", None, False

    def write(self, data: bytes) -> int:
        self.buf += data
        if self.status is None and b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            self.status = lines[0]
            self.streaming = any(ln.lower() == "content-type: text/event-stream" for ln in lines[1:])
            if self.streaming:
                self.real.write(f"{self.status}\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n".encode())
        if self.streaming:
            *events, self.buf = self.buf.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: {"):
                    self.real.write(anthropic.sse(self.stream.feed(json.loads(event[6:]))))
            self.real.flush()
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self.status is None or self.streaming:
            return
        code = int(self.status.split()[1])
        try:
            body = json.loads(self.buf or b"{}")
        except json.JSONDecodeError:
            body = {"error": self.buf.decode(errors="replace")}
        if code == 200:
            out = anthropic.from_chat(body, self.model)
        else:
            out = anthropic.error(code, str(body.get("error", body)))
        data = json.dumps(out).encode()
        self.real.write(f"{self.status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        self.real.write(data)
        self.real.flush()


class Handler(mls.APIHandler):
    """mlx_lm.server's handler, with admission, context limits, errors and /v1/messages."""

    def __init__(self, state: ServerState, *args, **kwargs):
        self.state = state
        self.responded = False
        self.prompt_tokens = 0
        super().__init__(state.generator, *args, **kwargs)

    def log_message(self, format, *args) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def send_response(self, code, message=None) -> None:
        self.responded = True
        super().send_response(code, message)

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        body = anthropic.error(status, message) if self.path == "/v1/messages" else {"error": message}
        self._json(status, body, headers)

    def do_POST(self) -> None:
        if not self.state.slots.acquire(blocking=False):
            self.rfile.read(_content_length(self.headers))
            self._error(503, f"server busy: {self.state.options.queue_size} requests already wait",
                        {"Retry-After": str(self.state.options.retry_after_s)})  # fmt: skip
            return
        try:
            if self.path == "/v1/messages":
                self._messages()
            else:
                super().do_POST()
        except (BrokenPipeError, ConnectionResetError):
            log.info("mlxstore serve: client went away; its generation is cancelled")
        except Exception as e:  # a request must never take the server down
            log.warning("mlxstore serve: request failed: %s", e)
            if not self.responded:
                self._error(400, str(e))
        finally:
            self.state.slots.release()

    def _messages(self) -> None:
        raw = self.rfile.read(_content_length(self.headers))
        try:
            body = json.loads(raw)
            chat = anthropic.to_chat(body)
        except (ValueError, TypeError) as e:
            self._error(400, f"Invalid request: {e}")
            return
        data = json.dumps(chat).encode()
        self.rfile = io.BytesIO(data)
        del self.headers["Content-Length"]
        self.headers["Content-Length"] = str(len(data))
        real, self.wfile = self.wfile, _AnthropicWriter(self.wfile, str(chat["model"]), 0)
        self.path = "/v1/chat/completions"
        try:
            super().do_POST()
        finally:
            writer, self.wfile, self.path = self.wfile, real, "/v1/messages"
            writer.finish()

    def handle_completion(self, request, stop_words) -> None:
        """Refuse prompts the plan has no KV room for; cap generation at max_context."""
        tokenizer = self.state.generator.model_provider.tokenizer
        args = SimpleNamespace(chat_template_kwargs=self.chat_template_kwargs)
        try:
            prompt = self.state.generator._tokenize(tokenizer, copy.deepcopy(request), args)[0]
        except Exception as e:
            self._error(400, f"cannot build the prompt: {e}")
            return
        limit = self.state.options.max_context
        if len(prompt) >= limit:
            self._error(400, f"prompt is {len(prompt)} tokens; max_context is {limit} "
                             "(the KV cache the memory plan reserved; restart with a larger --max-context)")  # fmt: skip
            return
        self.max_tokens = min(self.max_tokens, limit - len(prompt))
        if isinstance(self.wfile, _AnthropicWriter):
            self.wfile.stream.input_tokens = len(prompt)
        recorder = record.recorder_of(self.state.generator.model_provider.model)
        if recorder is not None:  # `serve --record-trace`: one turn per request
            recorder.new_turn()
        super().handle_completion(request, stop_words)

    def handle_models_request(self) -> None:
        o = self.state.options
        serving = ("one generation at a time (experts stream from disk)" if self.state.mode == "sequential"
                   else f"batched, up to {o.decode_concurrency} at once")  # fmt: skip
        self._json(200, {"object": "list", "data": [{
            "id": self.state.name, "object": "model", "created": self.created, "owned_by": "mlxstore",
            "mlxstore": {"mode": self.state.mode, "serving": serving, "queue_size": o.queue_size,
                         "max_context": o.max_context}}]})  # fmt: skip


def _content_length(headers) -> int:
    try:
        return max(0, int(headers.get("Content-Length") or 0))
    except ValueError:
        return 0


def make_server(model, tokenizer, name: str, options: ServeOptions) -> tuple[ThreadingHTTPServer, ServerState]:
    """A bound, not yet serving, HTTP server over an already-loaded model."""
    mode = mode_of(model)
    if options.prefill_step_size is None:  # the step the memory plan counted activations for
        plan = plan_of(model)
        options = replace(options, prefill_step_size=plan.prefill_step_size if plan else MAX_PREFILL_STEP)
    cli_args = _cli_args(options, name)
    provider = StoreProvider(cli_args, model, tokenizer, mode == "batched")
    prompt_cache = LRUPromptCache(options.prompt_cache_size if options.prompt_cache_bytes else 0,
                                  max_bytes=options.prompt_cache_bytes or 1 << 63)  # fmt: skip
    generator = mls.ResponseGenerator(provider, prompt_cache)
    running = 1 if mode == "sequential" else options.decode_concurrency
    state = ServerState(generator, options, name, mode, threading.BoundedSemaphore(running + options.queue_size))
    httpd = ThreadingHTTPServer((options.host, options.port), lambda *a, **k: Handler(state, *a, **k))
    httpd.daemon_threads = True
    return httpd, state


def serve(httpd: ThreadingHTTPServer, state: ServerState, announce=print) -> None:
    host, port = httpd.server_address[:2]
    o = state.options
    cache = f"prefix cache {o.prompt_cache_bytes} bytes" if o.prompt_cache_bytes else "no prefix cache"
    announce(f"mlxstore serve: http://{host}:{port}/v1 ({state.name}; {state.mode}: "
             f"{'one generation at a time' if state.mode == 'sequential' else 'mlx-lm batching'}, "
             f"queue {o.queue_size}; max_context {o.max_context}; {cache})")  # fmt: skip
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        state.generator.stop_and_join()
