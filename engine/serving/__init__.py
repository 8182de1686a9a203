"""The serving side of the engine, one concern per module (`python -m engine.serve` wires them together):

- `protocol`: the OpenAI chat-completions request/response models and error body;
- `templating`: messages + tools -> prompt text (Llama 3.x tool format, or the CoALM-IT LA format);
- `tool_parsers`: model text -> tool calls, one small class per format;
- `output`: content vs tool calls for a (streamed) answer;
- `runner` + `scheduler`: continuous batching over a slotted KV cache; `tp`: the same under tensor parallelism;
- `app`: the FastAPI routes; `fake`: a scripted model for API tests.
"""
