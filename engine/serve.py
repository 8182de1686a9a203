"""An OpenAI-compatible chat server with tool calls and continuous batching (FastAPI + uvicorn).

    python -m engine.serve --model smollm2-135m --port 8000
    python -m engine.serve --model /ckpt/Llama-3.1-8B-Instruct --adapter out/adapter --quantize nf4 --api-key KEY
    torchrun --nproc_per_node 2 -m engine.serve --model /ckpt/Llama-3.3-70B-Instruct --tp 2 --port 8000

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health (see docs/serving.md). The server binds to
127.0.0.1 unless --host is given; an API key makes /v1/ routes require `Authorization: Bearer <key>`: --api-key-file
FILE (or $COALM_API_KEY) keeps it out of the process list, where --api-key KEY is visible. With --port 0 the system
picks a free port; the line `engine.serve: listening on http://HOST:PORT` says which, once the model is loaded and
the socket accepts connections. Every flag, the port and the adapter's config are checked (and the port bound)
before the model loads. Connections are limited (--max-connections); request headers must arrive within
--header-timeout seconds and bodies within --body-timeout, at most --max-request-bytes; idle keep-alive connections
close after --keep-alive-timeout.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import socket
import sys
from pathlib import Path

from .loader import DTYPE_CHOICES, DTYPE_HELP

DEFAULT_BATCH = 16


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="preset, HF checkpoint dir, or .gguf file")
    p.add_argument("--adapter", help="PEFT LoRA adapter directory to apply")
    p.add_argument("--quantize", choices=["nf4"], help="load the base weights quantized (NF4)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (launch with torchrun)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (0: any free port)")
    p.add_argument("--api-key", help="require this bearer token on /v1/ routes (visible to other local users in the "
                                     "process list: prefer --api-key-file or $COALM_API_KEY)")
    p.add_argument("--api-key-file", help="read the API key from this file (first line)")
    p.add_argument("--served-model-name", help="the model id clients send (default: --model)")
    p.add_argument("--tool-format", default="auto", choices=["auto", "llama3", "la"],
                   help="how tools reach the model: llama3 JSON calls, la = CoALM-IT LA JSON list (auto: by model)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_BATCH, help="sequences decoded together (cache slots)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--kv-cache-memory", type=float, help="GiB of KV cache that admitted requests may reserve "
                   "(prompt + max_tokens each; others wait). Default: half the memory free at start")
    p.add_argument("--random-init", action="store_true", help="random weights (throughput runs)")
    p.add_argument("--max-request-bytes", type=int, default=8 << 20, help="largest request body (413 above it)")
    p.add_argument("--max-connections", type=int, default=256, help="open connections; more are answered 503")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request's headers (slow clients are closed)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request's body may take to arrive")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection is kept open")
    p.add_argument("--structured", default="auto", choices=["auto", "off"],
                   help="grammar-constrained decoding for tool_choice 'required' / named, strict tools and "
                        "response_format (auto); off: such requests get a 400")
    p.add_argument("--fake-model", help=argparse.SUPPRESS)  # tests: a scripted model (engine/serving/fake.py)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _load(a):
    """(scheduler, tokenizer, max_model_len) on every rank; only rank 0 gets a scheduler under --tp."""
    import engine

    from .loader import describe_dtype, resolve_dtype
    from .serving.runner import Runner
    from .serving.scheduler import Scheduler

    kwargs = {"adapter": a.adapter, "random_init": a.random_init, "dtype": resolve_dtype(a.dtype)}
    if a.tp > 1:
        kwargs["tp"] = a.tp  # under torchrun: this rank's shard (engine.load's per-tensor hook)
    if a.quantize:  # engine.load's quantize option belongs to the NF4 loader; pass it only when asked
        if "quantize" not in inspect.signature(engine.load).parameters:
            raise ValueError("--quantize needs engine.load(quantize=...), which this version does not have")
        kwargs["quantize"] = a.quantize
    model, tok = engine.load(a.model, **kwargs)
    logging.getLogger("engine.serve").info(describe_dtype(a.dtype, kwargs["dtype"]))
    max_len = min(a.max_model_len or model.args.max_seq_len, model.args.max_seq_len)
    runner = Runner(model, max_len, None if a.kv_cache_memory is None else int(a.kv_cache_memory * 2**30))
    if a.tp > 1:
        from .serving.tp import follow_or_lead

        runner = follow_or_lead(runner)
        if runner is None:  # a follower rank: it replayed rank 0's steps until the server stopped
            return None, tok, max_len
    return Scheduler(runner, tok, a.max_batch), tok, max_len


def _bind(host: str, port: int) -> socket.socket:
    """Bind and listen before announcing the port, so a client that reads it never races the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _api_key(a) -> str | None:
    """--api-key, else --api-key-file, else $COALM_API_KEY (an empty value is an error, not 'no key')."""
    if a.api_key is not None and a.api_key_file:
        raise ValueError("give --api-key or --api-key-file, not both")
    if a.api_key_file:
        try:
            lines = Path(a.api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--api-key-file {a.api_key_file}: cannot read it ({e})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ValueError(f"--api-key-file {a.api_key_file} is empty")
        return key
    key = a.api_key if a.api_key is not None else os.environ.get("COALM_API_KEY")
    if key is not None and not key.strip():
        raise ValueError("the API key (--api-key or $COALM_API_KEY) is empty")
    return key


def _check(a) -> None:
    """Flag checks that need no model: one line each, before minutes of loading."""
    if a.max_batch < 1 or a.tp < 1 or (a.max_model_len is not None and a.max_model_len < 2):
        raise ValueError(f"--max-batch and --tp must be >= 1 and --max-model-len >= 2, got {a.max_batch}, "
                         f"{a.tp} and {a.max_model_len}")
    if not 0 <= a.port <= 65535:
        raise ValueError(f"--port must be in 0..65535 (0: any free port), got {a.port}")
    for name in ("max_request_bytes", "max_connections"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
        if not 0 < getattr(a, name) < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be > 0 seconds, got {getattr(a, name)}")
    if a.served_model_name is not None and not a.served_model_name.strip():
        raise ValueError("--served-model-name is empty")
    if a.adapter:
        from .lora import read_adapter_config

        read_adapter_config(a.adapter)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = None
    try:
        _check(a)
        api_key = _api_key(a)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 serves
            sock = _bind(a.host, a.port)  # a taken port or a bad host fails now, not after loading
        from .serving.templating import choose_format

        if a.fake_model:
            from .serving.fake import FakeScheduler
            from .tokenizer import load_tokenizer

            scheduler, tok, max_len = FakeScheduler(a.fake_model), load_tokenizer(a.model), a.max_model_len or 8192
        else:
            scheduler, tok, max_len = _load(a)
            if scheduler is None:
                return 0
        fmt = choose_format(a.tool_format, tok, a.adapter)
    except (ValueError, FileNotFoundError, OSError) as e:
        if sock is not None:
            sock.close()
        msg = str(e) if not isinstance(e, socket.gaierror) else f"--host {a.host}: {e.strerror}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    import uvicorn

    from .serving.app import ServerState, create_app
    from .serving.connections import protocol_class

    compiler = None
    if a.structured == "auto":  # the vocabulary as an llguidance tokenizer: ~1 s, once
        from .structured import GrammarCompiler

        model = getattr(getattr(scheduler, "runner", None), "model", None)
        compiler = GrammarCompiler(tok, model.args.vocab_size if model is not None else None)
    state = ServerState(scheduler.start(), tok, a.served_model_name or a.model, fmt, max_len, api_key,
                        a.max_request_bytes, a.body_timeout, a.structured, compiler)
    config = uvicorn.Config(create_app(state), log_level=a.log_level, timeout_graceful_shutdown=5,
                            timeout_keep_alive=a.keep_alive_timeout,
                            http=protocol_class(a.header_timeout, a.max_connections))
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    print(f"engine.serve: listening on http://{host}:{port} (model {state.model_name}, tool format {fmt})",
          flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        scheduler.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
