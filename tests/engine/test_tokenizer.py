"""The Llama 3 tokenizer (tiktoken file from llama-models) against an independent BPE implementation (HF
`tokenizers`, built by transformers' TikTokenConverter from the same file), and the chat templates."""

import pytest

from engine.tokenizer import LLAMA3_SPLIT, TokenizerError, llama3_tokenizer_path, load_llama3_tiktoken, load_tokenizer

TEXTS = [
    "Hello world! How's it going?",
    "  spaces   and\ttabs\n\nnew lines\r\n",
    "naïve café — 日本語のテキスト, emoji 🚀🔥 and numbers 1234567 3.14159",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
]


@pytest.fixture(scope="module")
def llama3():
    return load_llama3_tiktoken()


@pytest.fixture(scope="module")
def hf_llama3(llama3):
    conv = pytest.importorskip("transformers.convert_slow_tokenizer")
    specials = sorted(llama3.special, key=llama3.special.get)
    from tokenizers import AddedToken

    tok = conv.TikTokenConverter(
        vocab_file=str(llama3_tokenizer_path()), pattern=LLAMA3_SPLIT, additional_special_tokens=specials
    ).converted()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    assert tok.token_to_id("<|eot_id|>") == 128009  # the specials keep their ids, none appended
    return tok


def test_special_ids_are_metas(llama3):
    # the ids published in Meta's Llama 3 model card / prompt-format docs
    assert (llama3.bos_id, llama3.eos_id, llama3.eot_id) == (128000, 128001, 128009)
    assert llama3.special["<|start_header_id|>"] == 128006 and llama3.special["<|eom_id|>"] == 128008
    assert llama3.vocab_size == 128256
    assert llama3.stop_ids == {128001, 128008, 128009}


@pytest.mark.parametrize("text", TEXTS)
def test_llama3_matches_independent_bpe(llama3, hf_llama3, text):
    ref = hf_llama3.encode(text, add_special_tokens=False).ids
    assert llama3.encode(text) == ref
    assert llama3.decode(ref) == text


def test_llama3_template_format(llama3):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = llama3.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = llama3.encode(text)
    assert ids[0] == 128000 and ids.count(128009) == 2 and ids[-1] == 271  # 271: "\n\n"


def test_llama3_template_tool_calls(llama3):
    tools = [{"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}}]
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}'},
    ]
    text = llama3.apply_chat_template(msgs, add_generation_prompt=True, tools=tools)
    assert "Environment: ipython" in text and '"name": "get_weather"' in text
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in text
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>' in text


def test_bad_messages_and_sources(llama3, tmp_path):
    with pytest.raises(TokenizerError, match="message 0"):
        llama3.apply_chat_template(["hello"])
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="unknown model preset"):
        load_tokenizer("llama-9b")
