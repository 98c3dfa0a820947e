"""sdviz's from-scratch CLIP tokenizer against transformers' CLIPTokenizer built from the same vocabulary file.

The reference is built offline from the shipped `.gz`, exactly as OpenAI's CLIP derives its vocabulary from it, so
nothing is downloaded. Everything here runs on the CPU in a few seconds.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hf_tokenizer

from sdviz.tokenizer import Encoding, Tokenizer, bytes_to_unicode, vocab_file

transformers = pytest.importorskip("transformers")
convert_slow_tokenizer = pytest.importorskip("transformers.convert_slow_tokenizer")

MAX_LENGTH = 77
BOS, EOS = 49406, 49407


# ---------------------------------------------------------------------------------------------------------------------
# The reference tokenizer and the prompts


@pytest.fixture(scope="module")
def ref() -> transformers.CLIPTokenizer:
    return hf_tokenizer()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def ref_ids(ref: transformers.CLIPTokenizer, texts: list[str]) -> list[list[int]]:
    return ref(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH).input_ids


def encode_quietly(tok: Tokenizer, text: str) -> Encoding:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return tok.encode(text)


HAND_WRITTEN = [
    "",
    " ",
    "   \t\n  ",
    "a",
    "a bluish circle, left",
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A Horse",
    "a red square above a blue triangle.",
    "Hello, world!!! How are you???",
    "...---...",
    "(masterpiece:1.2), [best quality], {highly detailed}",
    "trending on artstation, 8k, 4k uhd, f/1.8, 35mm",
    "1234567890 3.14159 -42 +7 1e10 0x1F 2024-01-01",
    "$100 for 50% off & free #shipping @home *now* ~ok~ `code` ^up^ |pipe| <tag> a=b",
    "she said \"hi\" and he said 'bye'",
    "it's a dog's life; don't, can't, won't, we're, they've, I'm, you'll, he'd",
    "IT'S A DOG'S LIFE; DON'T, WE'RE, I'M, YOU'LL, HE'D",
    "'s 't 're 've 'm 'll 'd ''s s' '",
    "café crème brûlée, jalapeño, niño, über, naïve, façade, Ærøskøbing, smørrebrød",
    "cafe\u0301 ni\u0303no u\u0308ber",  # decomposed accents: NFC must compose them
    "ÉCOLE ÑANDÚ ÜBER ÇA",
    "😀 🎉🎉 🐱‍👤 👍🏽 🇫🇷 ❤️",
    "a cat 🐈 on a mat",
    "猫が好きです。東京タワーの写真",
    "一只在月球上的猫",
    "한국어 텍스트와 고양이",
    "привет мир, Москва зимой",
    "ΟΔΟΣ οδος Σίσυφος ΣΊΣΥΦΟΣ",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी पाठ",
    "ไทยแลนด์",
    "İstanbul ıi ß ẞ ﬁ ﬀ Ǆ ǅ",
    "full\u3000width\u3000space and\xa0no-break\u2009thin",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeed",
    "file\x1cgroup\x1drecord\x1eunit\x1fsep",
    "control \x00 \x01 \x7f \x85 chars",
    "many     spaces      between     words",
    "   leading and trailing   ",
    "x<|endoftext|>y",
    "a <|startoftext|> b <|endoftext|> c",
    "a <|ENDOFTEXT|> b <|EndOfText|>",
    "<|endoftext|>",
    "<|EndOfText|>",
    "<|STARTOFTEXT|>",
    "<|endoftext|><|EndOfText|><|startoftext|>",
    "<|EndOfText|> a",
    "</w> hi</w>",
    "&amp; &lt;b&gt; &#39;",
    "cafÃ© mojibake",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ １２３",
    "①②③ ⅓ ² ³ ٣ ໓",
    "e = mc² → ∞ ≠ ∑ ∫ √2",
    "hyphen-ated, snake_case, camelCase, dot.separated, slash/separated",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a " * 75,
    "a " * 76,
    "a " * 200,
    "word " * 40 + "tail",
    "a highly detailed photograph of " * 20,
    "🎉" * 100,
    "猫" * 100,
    "!" * 500,
]

WORDS = (
    "a the of on in with and cat dog horse astronaut castle forest mountain river painting photo portrait city night "
    "sunset glowing neon cyberpunk watercolor oil canvas red green blue bluish reddish purple circle square triangle "
    "left right above below big small tiny huge detailed masterpiece trending artstation octane render unreal engine "
    "highly intricate ethereal moody cinematic lighting bokeh symmetrical steampunk bioluminescent"
).split()
EXTRA = [
    "café", "niño", "über", "jalapeño", "crème", "ÉTÉ", "Ørsted", "żółw", "İzmir", "straße",
    "😀", "🐱", "🎨", "👩‍🚀", "🌅", "猫", "東京", "한국", "привет", "Ω", "ΣΟΦΟΣ", "مرحبا", "ไทย",
    "123", "4", "3.5", "1920x1080", "50%", "$9.99", "#1", "@user", "it's", "don't", "we're", "I've", "I'm", "you'll",
    "he'd", "O'Neil", "'quoted'", '"double"', "(paren)", "[bracket]", "{brace}", "...", "!!", "?", ",", ";", ":", "-",
    "--", "/", "&", "*", "+", "=", "_", "~", "`", "^", "|", "<", ">", "e\u0301", "\u0301",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", " ", "  ", "\t", "\n", "\r\n", "", "\u3000", "\xa0", " , "]


def random_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` seeded random prompts mixing English words, accents, emoji, scripts, numbers, punctuation and case."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        pieces = []
        for _ in range(rng.choice([1, 2, 3, 5, 8, 12, 20, 40, 90])):
            word = rng.choice(WORDS) if rng.random() < 0.65 else rng.choice(EXTRA)
            case = rng.random()
            if case < 0.1:
                word = word.upper()
            elif case < 0.2:
                word = word.title()
            pieces.append(word + rng.choice(SEPARATORS))
        prompts.append("".join(pieces))
    return prompts


PROMPTS = HAND_WRITTEN + random_prompts(600)


# ---------------------------------------------------------------------------------------------------------------------
# The vocabulary


def test_shipped_vocabulary_loads(tok: Tokenizer) -> None:
    path = vocab_file()
    assert path.is_file() and path.name == "bpe_simple_vocab_16e6.txt.gz"
    assert path.parent.name == "data" and path.parent.parent.name == "sdviz"
    assert (path.parent / "LICENSE-CLIP-vocab.txt").is_file()
    assert tok.vocab_size == 49408
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.max_length) == (BOS, EOS, EOS, MAX_LENGTH)
    assert Tokenizer(vocab_path=str(path)).vocab_size == 49408


def test_bytes_to_unicode_is_gpt2s_byte_alphabet() -> None:
    table = bytes_to_unicode()
    assert table == convert_slow_tokenizer.bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(s.isprintable() and not s.isspace() for s in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("a")] == "a"


def test_reference_is_the_sd_tokenizer(ref: transformers.CLIPTokenizer, tok: Tokenizer) -> None:
    assert len(ref) == 49408
    assert ref.pad_token == "<|endoftext|>" and ref.pad_token_id == EOS
    assert ref.bos_token_id == BOS and ref.eos_token_id == EOS
    assert ref.model_max_length == MAX_LENGTH
    assert ref.get_vocab() == tok.encoder  # same 49,408 strings at the same ids


# ---------------------------------------------------------------------------------------------------------------------
# Equality with the reference


def test_ids_match_reference_on_many_prompts(ref: transformers.CLIPTokenizer, tok: Tokenizer) -> None:
    assert len(PROMPTS) >= 500
    expected = ref_ids(ref, PROMPTS)
    mismatches = [p for p, e in zip(PROMPTS, expected, strict=True) if encode_quietly(tok, p).ids != e]
    assert not mismatches, f"{len(mismatches)} prompts differ, first ones: {mismatches[:5]!r}"
    # the sample really does exercise truncation and short prompts
    lengths = [encode_quietly(tok, p).length for p in PROMPTS]
    assert max(lengths) == MAX_LENGTH and min(lengths) == 2
    assert sum(encode_quietly(tok, p).truncated for p in PROMPTS) >= 20


def test_batch_call_matches_reference(ref: transformers.CLIPTokenizer, tok: Tokenizer) -> None:
    texts = PROMPTS[:40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ids = tok(texts)
        single = tok(texts[4])
    assert ids.dtype == torch.long and ids.shape == (len(texts), MAX_LENGTH)
    assert ids.tolist() == ref_ids(ref, texts)
    assert single.shape == (1, MAX_LENGTH) and single[0].tolist() == ids[4].tolist()


def test_decode_matches_reference(ref: transformers.CLIPTokenizer, tok: Tokenizer) -> None:
    for prompt, ids in zip(PROMPTS, ref_ids(ref, PROMPTS), strict=True):
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True), prompt


# Characters that Python's Unicode tables know (14.0 on Python 3.11): the newest ones may be classified differently
# by the two implementations (see the module docstring). No surrogates.
unicode_text = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=unicode_text)
def test_random_unicode_matches_reference(ref: transformers.CLIPTokenizer, tok: Tokenizer, text: str) -> None:
    assert encode_quietly(tok, text).ids == ref_ids(ref, [text])[0]


# ---------------------------------------------------------------------------------------------------------------------
# The Encoding's structure


def test_empty_prompt(tok: Tokenizer) -> None:
    enc = tok.encode("")
    assert enc.ids == [BOS, EOS] + [EOS] * 75
    assert enc.tokens == ["<|startoftext|>", "<|endoftext|>"] + [""] * 75
    assert enc.word_index == [-1] * MAX_LENGTH
    assert enc.words == [] and enc.length == 2 and not enc.truncated


def test_words_tokens_and_word_index(tok: Tokenizer) -> None:
    enc = tok.encode("a bluish circle, left")
    assert enc.words == ["a", "bluish", "circle,", "left"]
    assert enc.length == 8 and not enc.truncated
    assert enc.tokens[:8] == ["<|startoftext|>", "a", "blu", "ish", "circle", ",", "left", "<|endoftext|>"]
    assert enc.word_index[:8] == [-1, 0, 1, 1, 2, 2, 3, -1]  # both pieces of "bluish" point at word 1
    assert enc.ids[:8] == [BOS, 320, 1263, 1061, 7117, 267, 1823, EOS]
    assert enc.tokens[8:] == [""] * 69 and enc.word_index[8:] == [-1] * 69
    # cleaning: case, NFC and whitespace runs do not change words or ids
    messy = tok.encode("  A   Bluish\tCIRCLE,\n left ")
    assert (messy.ids, messy.words, messy.word_index) == (enc.ids, enc.words, enc.word_index)


def test_word_index_with_non_ascii(tok: Tokenizer) -> None:
    enc = tok.encode("Café 😀 猫が好き")
    assert enc.words == ["café", "😀", "猫が好き"]
    body = slice(1, enc.length - 1)
    assert sorted(set(enc.word_index[body])) == [0, 1, 2]
    assert enc.word_index[body] == sorted(enc.word_index[body])
    assert "😀" in enc.tokens  # a whole-character token reads as the character
    assert tok.decode(enc.ids) == "café 😀 猫が好き"


def test_truncation_warns_and_keeps_end_token(tok: Tokenizer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits = tok.encode("a " * 75)  # exactly 75 tokens: no warning
    assert fits.length == MAX_LENGTH and not fits.truncated and fits.ids[-1] == EOS
    with pytest.warns(UserWarning, match=r"80 tokens long.*last 5 tokens were dropped"):
        enc = tok.encode("a " * 80)
    assert enc.truncated and enc.length == MAX_LENGTH
    assert enc.ids == [BOS] + [320] * 75 + [EOS]
    assert enc.tokens[-1] == "<|endoftext|>" and enc.word_index[-1] == -1
    assert len(enc.words) == 80 and enc.word_index[-2] == 74


def test_special_tokens_match_case_sensitively(ref: transformers.CLIPTokenizer, tok: Tokenizer) -> None:
    # written exactly, a special token is its id; in another case it is ordinary punctuation and letters, also when
    # it is the whole prompt (cleaning lower-cases it into the special token's spelling, which must not count)
    expected = [BOS, 27, 347, 40786, 4160, 91, 285, EOS]  # what transformers gives
    assert ref("<|EndOfText|>").input_ids == expected
    assert tok.encode("<|EndOfText|>").ids[:8] == expected
    assert tok.encode("<|endoftext|>").ids[:3] == [BOS, EOS, EOS] and tok.encode("<|endoftext|>").length == 3
    enc = tok.encode("x<|endoftext|><|EndOfText|>")
    assert enc.ids[: enc.length] == [BOS, 343, EOS] + expected[1:]
    assert enc.tokens[2] == "<|endoftext|>" and enc.tokens[3] == "<"


def test_custom_max_length(tok: Tokenizer) -> None:
    short = Tokenizer(max_length=8)
    assert short.encode("").ids == [BOS] + [EOS] * 7
    with pytest.warns(UserWarning):
        assert short.encode("a " * 10).ids == [BOS] + [320] * 6 + [EOS]
    with pytest.raises(ValueError):
        Tokenizer(max_length=1)


def test_decode_roundtrip_plain_text(tok: Tokenizer) -> None:
    for text in ["a photograph of an astronaut riding a horse", "a bluish circle left", "hello", ""]:
        assert tok.decode(tok.encode(text).ids) == text
        assert tok.decode(tok(text)[0]) == text
    assert tok.decode(tok.encode("Hello,  World!").ids) == "hello , world !"  # CLIP's decoding is lossy
    assert tok.decode(tok.encode("hi").ids, skip_special_tokens=False).startswith("<|startoftext|>hi <|endoftext|>")


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=120))
def test_property_random_unicode(tok: Tokenizer, text: str) -> None:
    enc = encode_quietly(tok, text)
    assert len(enc.ids) == len(enc.tokens) == len(enc.word_index) == MAX_LENGTH
    assert enc.ids[0] == BOS and enc.ids[enc.length - 1] == EOS
    assert all(0 <= i < tok.vocab_size for i in enc.ids)
    assert enc.ids[enc.length :] == [EOS] * (MAX_LENGTH - enc.length)
    assert all(-1 <= w < len(enc.words) for w in enc.word_index)
    assert enc.word_index[0] == enc.word_index[enc.length - 1] == -1
    body = enc.word_index[1 : enc.length - 1]
    assert body == sorted(body) and all(w >= 0 for w in body)
