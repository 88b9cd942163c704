"""Pure wire formats: bytes and JSON in, values out, one module per concern or API.

- `request`     read a JSON request body once and splice a new `model` into it (every API)
- `usage`       token usage and the answering model of a JSON answer
- `sse`         server-sent events: incremental splitting, each event's JSON
- `chat`        chat completions and legacy completions: prompt and answer text
- `failures`    the router's error bodies; an upstream error's message, code and Retry-After
- `responses`   OpenAI Responses: request facts, encrypted reasoning, events, errors
- `messages`    Anthropic Messages and count_tokens: request facts, usage, events, errors
- `embeddings`  embeddings: inputs, vector lengths and dimensions
- `prefill`     what a broken stream delivered, and the request that continues it per form
- `splice`      a continuation's events rewritten into the first attempt's stream

May import: the standard library, orjson, `addon.errors`. Never mitmproxy, aiohttp, httpx,
sqlite3, psycopg, redis, yaml, threading, or the clock.
"""
