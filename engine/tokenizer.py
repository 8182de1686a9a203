"""Tokenizers and chat templates.

Three sources, one interface (`Tokenizer`):
- the Llama 3 tiktoken file shipped in the `llama-models` package (`load_tokenizer("llama3")`);
- a Hugging Face `tokenizer.json` (+ `tokenizer_config.json` for the chat template and special tokens);
- the vocabulary embedded in a GGUF file (byte-level BPE: tokens, merges, token types, chat template).

Chat templates come from the checkpoint when it has one (rendered with jinja2 in a sandbox, as transformers
does); otherwise the built-in Llama 3.x template (with tool-call headers) or ChatML.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

# Built-in Llama 3.x template: header/eot framing, JSON tool calls as Meta documents them for 3.1+, tool results in
# the `ipython` role, tool definitions in the system turn with "Environment: ipython".
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}"
    "{%- set sys = (messages[0]['content'] if messages and messages[0]['role'] == 'system' else '') %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\n' }}"
    "{{- 'You have access to the following functions. To call a function, respond with JSON of the form '"
    " ~ '{\"name\": function name, \"parameters\": dictionary of argument name and its value}.\\n\\n' }}"
    "{%- for t in tools %}{{- t | tojson }}{{- '\\n\\n' }}{%- endfor %}"
    "{{- sys ~ '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if tools and loop.first and m['role'] == 'system' %}{%- continue %}{%- endif %}"
    "{%- set role = 'ipython' if m['role'] in ('tool', 'ipython') else m['role'] %}"
    "{{- '<|start_header_id|>' ~ role ~ '<|end_header_id|>\\n\\n' }}"
    "{%- if m.get('tool_calls') %}"
    "{%- for c in m['tool_calls'] %}{%- set f = c.get('function', c) %}"
    "{{- '{\"name\": \"' ~ f['name'] ~ '\", \"parameters\": ' ~ (f.get('arguments', f.get('parameters', {})) | tojson)"
    " ~ '}' }}"
    "{%- endfor %}"
    "{%- else %}"
    "{%- if m['content'] is string %}{{- m['content'] }}{%- else %}{{- m['content'] | tojson }}{%- endif %}"
    "{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CHATML_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
]
N_LLAMA3_SPECIAL = 256


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """encode/decode over a tiktoken or `tokenizers` backend, plus the chat template and special ids.

    Attributes: name ("llama3" | "chatml"), bos_id (None when the format adds none), eos_id, eot_id (end of
    turn), pad_id, stop_ids (generation stops on any of them), vocab_size, chat_template (jinja source).
    """

    def __init__(self, backend, special: dict[str, int], name: str, chat_template: str | None = None,
                 bos: str | None = None, eos: str | None = None):
        self._backend = backend
        self._tiktoken = not hasattr(backend, "encode_batch_fast") and hasattr(backend, "encode_ordinary")
        self.special = dict(special)
        self.name = name
        self._id_to_special = {v: k for k, v in self.special.items()}
        if name == "llama3":
            self.bos_token, self.eos_token = bos or "<|begin_of_text|>", eos or "<|end_of_text|>"
            self.eot_id = self.special["<|eot_id|>"]
            stops = ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]
            pad = "<|finetune_right_pad_id|>"
        else:
            self.bos_token, self.eos_token = bos, eos or "<|endoftext|>"
            self.eot_id = self.special["<|im_end|>"]
            stops = ["<|im_end|>", self.eos_token]
            pad = self.eos_token
        self.bos_id = self.special.get(self.bos_token) if self.bos_token else None
        self.eos_id = self.special[self.eos_token]
        self.pad_id = self.special.get(pad, self.eos_id)
        self.stop_ids = {self.special[s] for s in stops if s in self.special}
        self.chat_template = chat_template or (LLAMA3_TEMPLATE if name == "llama3" else CHATML_TEMPLATE)
        self.end_of_turn = self._id_to_special[self.eot_id]

    @property
    def vocab_size(self) -> int:
        return self._backend.n_vocab if self._tiktoken else self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it become their special ids."""
        if self._tiktoken:
            ids = self._backend.encode(text, allowed_special="all")
        else:
            ids = self._backend.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] + ids) if bos and self.bos_id is not None else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._tiktoken:
            return self._backend.encode_batch(texts, allowed_special="all")
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._id_to_special]
        if self._tiktoken:
            return self._backend.decode(ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tools: list[dict] | None = None) -> str:
        """Render chat messages ({"role", "content"}) to text with the checkpoint's (or built-in) template."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise TokenizerError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        return _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools=None) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, tools))


@lru_cache(maxsize=16)
def _compile(source: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def llama3_tokenizer_path() -> Path:
    """The Llama 3 tiktoken file shipped in the `llama-models` package (found without importing it)."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("the Llama 3 tokenizer needs the `llama-models` package: "
                             "pip install --no-deps llama-models")
    path = Path(spec.submodule_search_locations[0]) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise TokenizerError(f"llama-models is installed but {path} is missing")
    return path


def load_llama3_tiktoken(path: str | Path | None = None) -> Tokenizer:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    path = Path(path) if path else llama3_tokenizer_path()
    ranks = load_tiktoken_bpe(str(path))
    names = LLAMA3_SPECIAL + [f"<|reserved_special_token_{i}|>" for i in range(2, N_LLAMA3_SPECIAL - 10)]
    special = {tok: len(ranks) + i for i, tok in enumerate(names)}
    enc = tiktoken.Encoding(name=path.name, pat_str=LLAMA3_SPLIT, mergeable_ranks=ranks, special_tokens=special)
    return Tokenizer(enc, special, "llama3")


def _name_for(special: dict[str, int]) -> str:
    if "<|eot_id|>" in special:
        return "llama3"
    if "<|im_end|>" in special:
        return "chatml"
    raise TokenizerError("unsupported vocabulary: neither Llama 3 (<|eot_id|>) nor ChatML (<|im_end|>) special tokens")


def load_hf_tokenizer(directory: str | Path) -> Tokenizer:
    """A checkpoint directory with tokenizer.json (and tokenizer_config.json for the template)."""
    from tokenizers import Tokenizer as HFTokenizer

    d = Path(directory)
    tj = d / "tokenizer.json"
    if not tj.is_file():
        raise TokenizerError(f"no tokenizer.json in {d}")
    backend = HFTokenizer.from_file(str(tj))
    special = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
    cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").is_file() else {}
    template = cfg.get("chat_template")
    if template is None and (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text()
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])

    def tok_str(v):
        return v.get("content") if isinstance(v, dict) else v

    return Tokenizer(backend, special, _name_for(special), template, tok_str(cfg.get("bos_token")),
                     tok_str(cfg.get("eos_token")))


def load_gguf_tokenizer(path: str | Path, reader=None) -> Tokenizer:
    """The byte-level BPE vocabulary embedded in a GGUF file (tokenizer.ggml.model == "gpt2")."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from .gguf_read import GGUFFile
    from .weights import gguf_field

    reader = reader or GGUFFile(path)

    def field(name, default=None):
        return gguf_field(reader, name, default)

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"{path}: GGUF tokenizer {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    backend = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    if field("tokenizer.ggml.pre") in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe"):
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # the GPT-2 split, which is what SmolLM2's "smollm" pre-tokenizer is
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == 3]  # 3 = CONTROL in llama.cpp's token types
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, ty in zip(tokens, types) if ty == 4]  # 4 = USER_DEFINED: matched whole, not special
    if user:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    special = {t: tokens.index(t) for t in control + user}
    bos_id, eos_id = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if bos_id is not None and field("tokenizer.ggml.add_bos_token", False) else None
    eos = tokens[eos_id] if eos_id is not None else None
    name = _name_for(special)
    if name == "llama3":
        bos = tokens[bos_id] if bos_id is not None else None
    return Tokenizer(backend, special, name, field("tokenizer.chat_template"), bos, eos)


@lru_cache(maxsize=8)
def load_tokenizer(source: str | Path) -> Tokenizer:
    """"llama3", a preset name, a checkpoint directory, or a .gguf file (cached: tokenizers are read-only)."""
    s = str(source)
    if s == "llama3":
        return load_llama3_tiktoken()
    p = Path(s)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return load_hf_tokenizer(p)
        if (p / "original" / "tokenizer.model").is_file():
            return load_llama3_tiktoken(p / "original" / "tokenizer.model")
        raise TokenizerError(f"no tokenizer.json (or original/tokenizer.model) in {p}")
    if p.suffix == ".gguf":
        if not p.is_file():
            raise TokenizerError(f"no such GGUF file: {p}")
        return load_gguf_tokenizer(p)
    from .config import get_config, resolve_name

    name = resolve_name(s)
    if get_config(name).tokenizer == "chatml":
        from .weights import smollm2_gguf_path

        return load_gguf_tokenizer(smollm2_gguf_path())
    return load_llama3_tiktoken()
