"""CLIP's tokenizer: byte-level byte-pair encoding (BPE), from scratch, over the shipped vocabulary file.

Stable Diffusion 1.x reads its prompt through OpenAI CLIP's text encoder, which sees the prompt as 77 integer ids.
This file turns text into those ids, in five steps that you can follow top to bottom:

1. **Clean** the text: Unicode NFC, every run of whitespace becomes one space, lower case.
2. **Split** it into chunks with a regular expression: runs of letters, single digits, runs of punctuation, and the
   English contractions 's 't 're 've 'm 'll 'd. Whitespace only separates chunks and is thrown away.
3. **Bytes to symbols**: each chunk is written as UTF-8 bytes, and each byte as one printable character
   (`bytes_to_unicode`), so that any text at all, emoji and CJK included, has a spelling in 256 base symbols.
4. **Merge** (BPE): the last symbol of the chunk is marked as ending a word (`</w>`), then the pair of neighbouring
   symbols that the vocabulary file lists earliest is merged into one symbol, again and again, until no listed pair
   is left. "bluish" becomes `blu` + `ish</w>`, "circle" stays whole as `circle</w>`.
5. **Frame**: `<|startoftext|>`, the token ids, `<|endoftext|>`, then padding up to 77 positions. SD 1.x pads with
   the end token (id 49407); a prompt longer than 75 tokens is cut, and the end token is kept last.

The vocabulary file `data/bpe_simple_vocab_16e6.txt.gz` is OpenAI CLIP's (MIT licence, see
`data/LICENSE-CLIP-vocab.txt`). Its first line is a header; the next 48,894 lines are the merges, best first. The
49,408 tokens are: the 256 byte symbols, the same 256 with `</w>`, one token per merge, and the two special tokens.

**Differences from OpenAI's original** (`clip/simple_tokenizer.py`): sdviz reproduces what Stable Diffusion pipelines
actually run, the `CLIPTokenizer` of Hugging Face transformers (the tests compare the two on hundreds of prompts).

- OpenAI cleans text with `ftfy.fix_text` (repairs mojibake, normalizes Unicode with NFC) and `html.unescape` twice.
  sdviz, like transformers, only applies NFC: a prompt with "&amp;" keeps the five characters `&amp;`, and broken
  text such as "cafÃ©" is not repaired.
- OpenAI strips whitespace with Python's `str.split()`, which also treats the control characters U+001C..U+001F as
  spaces; sdviz uses the Unicode White_Space set (the `\\s` of `regex` and of transformers' regex engine), which
  keeps them as punctuation.
- Lower case is applied one character at a time (as transformers does), so a word-final capital sigma becomes "σ",
  not the "ς" that Python's `str.lower()` would give.
- The special tokens: written exactly, `<|startoftext|>` / `<|endoftext|>` in a prompt become the special ids (as in
  both references); in any other case (`<|EndOfText|>`) they are ordinary punctuation and letters, where OpenAI's
  original, which lower-cases first, would also map them to the special ids.
- Recent additions to Unicode (code points that Unicode 14, the version of Python 3.11's tables, leaves
  unassigned) can be classified differently: `regex` knows a newer Unicode than transformers' regex engine, and
  Rust's lower-casing a newer one than Python's. Every code point assigned in Unicode 14 tokenizes identically
  (checked once over all 1.1 million code points; the tests check a sample).

Reading notes: `Tokenizer.encode` returns an `Encoding` that keeps, per position, the readable token and the index
of the prompt word it came from, so that a cross-attention map for position 3 can be labelled "ish (of 'bluish')".
"""

from __future__ import annotations

import gzip
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import regex
import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of the file: 48,894; 256 + 256 + 48,894 + 2 = 49,408 tokens


def vocab_file() -> Path:
    """Path of the shipped vocabulary (OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`)."""
    return Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """A one-to-one map from the 256 byte values to 256 printable characters.

    BPE works on strings, and we want every possible byte sequence to be a string of *visible* symbols (no spaces,
    no control characters, which the merge file could not write down). Printable Latin-1 bytes map to themselves
    ("a" -> "a", "é" -> "é"); the 68 others (space, control codes, ...) map to the code points 256, 257, ... in
    order, so the space byte 0x20 becomes "Ġ" (U+0120).
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_values = printable[:]
    code_points = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points, strict=True)}


def get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    """The set of neighbouring symbol pairs in a word: ("c", "a", "t</w>") -> {("c", "a"), ("a", "t</w>")}."""
    return set(zip(word[:-1], word[1:], strict=True))


# Step 1: cleaning. `\s` here is Unicode's White_Space set, the same set transformers uses.
WHITESPACE = regex.compile(r"\s+")


def clean(text: str) -> str:
    """NFC, every whitespace run to one space, lower case, one character at a time (see the module docstring).

    Leading and trailing whitespace become one space rather than nothing: spaces are dropped by the splitting
    step anyway.
    """
    text = unicodedata.normalize("NFC", text)
    text = WHITESPACE.sub(" ", text)
    return "".join(ch.lower() for ch in text)


# Step 2: splitting into chunks. The alternatives are tried left to right at each position: a contraction, a run
# of letters (\p{L}), one digit (\p{N}: "2024" is four chunks), a run of anything else that is not whitespace.
# OpenAI's pattern starts with the two special tokens; here they are cut out of the raw prompt beforehand
# (`SPECIAL`), which is what transformers does.
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
SPECIAL = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")


class NotInPrompt(ValueError, KeyError):
    """A word that is not a word of the prompt (a ValueError, and a KeyError for the code that looks words up)."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


def _bare(word: str) -> str:
    """A word as prompts are matched: lower case, no surrounding punctuation ("Circle," -> "circle")."""
    return word.lower().strip().strip(".,;:!?\"'()")


@dataclass
class Encoding:
    """One encoded prompt, with everything needed to label a position of the 77.

    ids: exactly `max_length` ids: <|startoftext|>, tokens, <|endoftext|>, padded with <|endoftext|>.
    tokens: per position, the token as readable text ("<|startoftext|>", "circle", "ish", "<|endoftext|>", or ""
        for padding): its bytes decoded back to text and "</w>" stripped. A piece of a multi-byte character that
        is split across tokens shows its bytes, e.g. "\\xf0\\x9f".
    word_index: per position, index into `words` of the prompt word the token came from; -1 for start/end/padding.
    words: the prompt's words: the cleaned, lower-cased prompt split on spaces.
    length: number of non-padding positions (start + tokens + end).
    truncated: whether tokens were dropped to fit `max_length`.
    """

    ids: list[int]
    tokens: list[str]
    word_index: list[int]
    words: list[str]
    length: int
    truncated: bool

    def positions(self, word: str | int) -> list[int]:
        """The token positions (0..76) of a prompt word: its sub-tokens, for every occurrence of the word
        (case and surrounding punctuation ignored); or, for an int, of the word with that index in `words`.

        The one way sdviz finds a word's tokens (word maps, edits, interventions). A word that is not in the prompt
        is a one-line `NotInPrompt` error (a ValueError and a KeyError) that lists the prompt's words."""
        if isinstance(word, bool) or not isinstance(word, str | int):
            raise TypeError(f"a word is a string (or a word index), got {word!r}")
        if isinstance(word, int):
            if not 0 <= word < len(self.words):
                raise IndexError(f"word index {word} out of range: the prompt has {len(self.words)} words {self.words}")
            indices = {word}
        else:
            indices = {i for i, w in enumerate(self.words) if _bare(w) == _bare(word)}
        found = [p for p, wi in enumerate(self.word_index) if wi in indices]
        if not found:
            words = [_bare(w) for w in self.words]
            raise NotInPrompt(f"{word!r} is not a word of the prompt {' '.join(self.words)!r}; its words: {words}")
        return found


class Tokenizer:
    """CLIP's byte-level BPE tokenizer. `Tokenizer()(["a red square"])` is the (1, 77) id tensor SD 1.x expects."""

    def __init__(self, vocab_path: str | Path | None = None, max_length: int = 77) -> None:
        """Load the merges from `vocab_path` (default: the shipped file) and build the vocabulary from them."""
        if max_length < 2:
            raise ValueError(f"max_length must leave room for the start and end tokens, got {max_length}")
        path = Path(vocab_path) if vocab_path is not None else vocab_file()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # line 0 is the "#version" header
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not a CLIP BPE merges file: expected {N_MERGES} lines of two symbols")

        self.byte_encoder = bytes_to_unicode()  # byte value -> symbol
        self.byte_decoder = {s: b for b, s in self.byte_encoder.items()}  # symbol -> byte value
        vocab = list(self.byte_encoder.values())  # the 256 single-byte symbols ...
        vocab += [s + END_OF_WORD for s in vocab]  # ... the same ending a word ...
        vocab += [a + b for a, b in merges]  # ... one token per merge, in merge order ...
        vocab += [BOS_TOKEN, EOS_TOKEN]  # ... and the two special tokens: 49,408 in all for CLIP's file
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.cache: dict[str, tuple[str, ...]] = {}

        self.bos_id: int = self.encoder[BOS_TOKEN]  # 49406
        self.eos_id: int = self.encoder[EOS_TOKEN]  # 49407
        self.pad_id: int = self.eos_id  # SD 1.x pads with the end token
        self.max_length: int = max_length

    @property
    def vocab_size(self) -> int:
        """Number of tokens (49,408 for CLIP's vocabulary)."""
        return len(self.encoder)

    def bpe(self, chunk: str) -> tuple[str, ...]:
        """Step 4: merge the symbols of one chunk (already in byte symbols) into vocabulary tokens.

        "bluish" -> ("b", "l", "u", "i", "s", "h</w>") -> ... -> ("blu", "ish</w>"). At each round the pair
        with the lowest rank (earliest line of the merges file) is merged everywhere it occurs, left to right.
        """
        if chunk in self.cache:
            return self.cache[chunk]
        word = tuple(chunk[:-1]) + (chunk[-1] + END_OF_WORD,)
        while len(word) > 1:
            pairs = get_pairs(word)
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, len(self.bpe_ranks)))
            if best not in self.bpe_ranks:
                break  # no pair left that the vocabulary knows how to merge
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        if len(self.cache) > 100_000:  # prompts repeat words; bound the memory all the same
            self.cache.clear()
        self.cache[chunk] = word
        return word

    def token_text(self, token: str) -> str:
        """A vocabulary token as readable text: "ish</w>" -> "ish", "Ġ"-style byte symbols back to bytes, then UTF-8."""
        if token in (BOS_TOKEN, EOS_TOKEN):
            return token
        token = token.removesuffix(END_OF_WORD)
        return bytes(self.byte_decoder[s] for s in token).decode("utf-8", errors="backslashreplace")

    def encode(self, text: str) -> Encoding:
        """Encode one prompt into exactly `max_length` ids, with per-position tokens and word indices.

        Warns (UserWarning) and truncates when the prompt has more than `max_length - 2` tokens; the end token is
        always kept last.
        """
        # Cut out the special tokens written in the prompt, exactly as written (case-sensitive), and clean the text
        # between them (step 1). `SPECIAL.split` puts the special tokens at the odd indices. Which parts are special
        # is decided here, on the raw text: cleaning lower-cases "<|EndOfText|>" into "<|endoftext|>", which must
        # stay ordinary text.
        parts = [(p, i % 2 == 1) for i, p in enumerate(SPECIAL.split(text))]
        parts = [(p if special else clean(p), special) for p, special in parts if p]
        cleaned = "".join(p for p, _ in parts)
        words = [w for w in cleaned.split(" ") if w]
        # word_of_char[k]: index in `words` of the word containing character k of `cleaned` (-1 on a space).
        word_of_char: list[int] = []
        n_words, in_word = 0, False
        for ch in cleaned:
            if ch == " ":
                in_word = False
                word_of_char.append(-1)
            else:
                if not in_word:
                    n_words, in_word = n_words + 1, True
                word_of_char.append(n_words - 1)

        # Steps 2 to 4: split into chunks, spell each chunk in byte symbols, merge.
        body: list[tuple[int, str, int]] = []  # (id, readable token, word index)
        offset = 0
        for part, special in parts:
            if special:
                body.append((self.encoder[part], part, word_of_char[offset]))
            else:
                for match in PATTERN.finditer(part):
                    chunk = "".join(self.byte_encoder[b] for b in match.group().encode("utf-8"))
                    for token in self.bpe(chunk):
                        body.append((self.encoder[token], self.token_text(token), word_of_char[offset + match.start()]))
            offset += len(part)

        # Step 5: frame with start and end tokens, truncate, pad.
        room = self.max_length - 2
        truncated = len(body) > room
        if truncated:
            warnings.warn(
                f"The prompt is {len(body)} tokens long, more than the {room} that fit in {self.max_length} positions: "
                f"the last {len(body) - room} tokens were dropped.",
                UserWarning,
                stacklevel=2,
            )
            body = body[:room]
        length = len(body) + 2
        n_pad = self.max_length - length
        return Encoding(
            ids=[self.bos_id] + [i for i, _, _ in body] + [self.eos_id] + [self.pad_id] * n_pad,
            tokens=[BOS_TOKEN] + [t for _, t, _ in body] + [EOS_TOKEN] + [""] * n_pad,
            word_index=[-1] + [w for _, _, w in body] + [-1] + [-1] * n_pad,
            words=words,
            length=length,
            truncated=truncated,
        )

    def __call__(self, texts: str | list[str]) -> torch.LongTensor:
        """Encode a prompt or a batch of prompts: (B, max_length) int64 ids, B = 1 for a single string."""
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self.encode(t).ids for t in texts], dtype=torch.long)  # (B, max_length)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids back to text. Lossy as CLIP is: lower case, single spaces, and a space after every chunk ("hi !")."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        special = {self.bos_id, self.eos_id, self.pad_id}
        data = bytearray()
        for i in ids:
            i = int(i)
            if i in special:
                if not skip_special_tokens:
                    data += self.decoder[i].encode("utf-8")
                continue
            token = self.decoder[i]
            data += bytes(self.byte_decoder[s] for s in token.removesuffix(END_OF_WORD))
            if token.endswith(END_OF_WORD):
                data += b" "
        return data.decode("utf-8", errors="replace").strip()
