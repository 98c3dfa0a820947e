"""Which token of one prompt stands for which token of another: the alignments behind replace and refine.

Cross-attention probabilities have one column per token position (77 of them). To give a target prompt the source
prompt's attention maps, every target column must know which source column(s) it stands for. Prompt-to-prompt
(Hertz et al. 2022) writes this as a matrix, and so does sdviz:

    target column j  =  sum_i  source column i * mapper[i, j]        for the columns j with own[j] == False

    replace   "a red circle on the left" -> "a blue circle on the left": the same number of words, compared position
              for position. A word kept is its own column; a replaced word's columns take the source word's columns,
              shared out evenly if the two words have different numbers of tokens ("red" -> "cy" "an").
              (p2p's `get_replacement_mapper`.)
    refine    "a red circle" -> "a large red circle": the target adds (or drops) words. The tokens the two prompts
              share, in order (their longest common subsequence), are aligned; the target's other tokens ("large")
              keep their own attention: own[j] = True. (p2p's `get_refinement_mapper`, which aligns token ids the
              same way, by a global alignment.)

In both, <|startoftext|> maps to itself, and the <|endoftext|> token and the padding after it are aligned in order.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import Tensor

from sdviz.tokenizer import Encoding


@dataclass
class Alignment:
    """How a target prompt's 77 columns are made from a source prompt's: `mapper` (77, 77), `own` (77,) bool."""

    mapper: Tensor  # (M, M): target column j = sum_i source column i * mapper[i, j]
    own: Tensor  # (M,) bool: the target columns that keep the target's own attention (no source counterpart)

    def map(self, source: Tensor) -> Tensor:
        """Source probabilities (..., M) -> the target's columns made from them (..., M) (meaningless where `own`)."""
        return source @ self.mapper.to(source)  # (..., M) @ (M, M) -> (..., M)


def _norm(word: str) -> str:
    return word.lower().strip().strip(".,;:!?\"'()")


def _word_tokens(encoding: Encoding) -> list[list[int]]:
    """The token positions of each word, in order (a word cut off by truncation has none)."""
    groups: list[list[int]] = [[] for _ in encoding.words]
    for p, wi in enumerate(encoding.word_index):
        if wi >= 0:
            groups[wi].append(p)
    return groups


def _tail(source: Encoding, target: Encoding, mapper: Tensor, own: Tensor) -> None:
    """Align <|endoftext|> and the padding after it, position for position from each prompt's end."""
    for k in range(len(target.ids)):
        i, j = source.length - 1 + k, target.length - 1 + k
        if i >= len(source.ids) or j >= len(target.ids):
            break
        mapper[i, j], own[j] = 1.0, False


def _differences(source: Encoding, target: Encoding) -> str:
    """The word spans in which two prompts differ, with their tokens: "'red circle' (red, circle) -> ..."."""
    a, b = [_norm(w) for w in source.words], [_norm(w) for w in target.words]
    sa, sb = _word_tokens(source), _word_tokens(target)

    def span(enc: Encoding, groups: list[list[int]], words: list[str], lo: int, hi: int) -> str:
        if lo == hi:
            return "nothing"
        tokens = [enc.tokens[p] for g in groups[lo:hi] for p in g]
        return f"{' '.join(words[lo:hi])!r} (tokens {', '.join(tokens) or 'none'})"

    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            parts.append(f"{span(source, sa, a, i1, i2)} -> {span(target, sb, b, j1, j2)}")
    return "; ".join(parts) or "nowhere"


def replacement(source: Encoding, target: Encoding, source_prompt: str = "", target_prompt: str = "") -> Alignment:
    """The alignment of prompt-to-prompt's *replace*: the prompts have the same number of words, and the target's
    word k takes the columns of the source's word k (p2p's `get_replacement_mapper`).

    Prompts whose words do not pair up one for one are a one-line error that says where they differ (with the tokens)
    and suggests *refine*.
    """
    m = len(target.ids)
    if len(source.words) != len(target.words):
        raise ValueError(
            f"replace needs prompts that align word for word, token for token, but {source_prompt!r} has "
            f"{len(source.words)} words and {target_prompt!r} {len(target.words)}; where they differ (source -> "
            f"target): {_differences(source, target)}. For a target that adds words, use refine."
        )
    mapper, own = torch.zeros(m, m), torch.ones(m, dtype=torch.bool)
    mapper[0, 0], own[0] = 1.0, False  # <|startoftext|>
    for ps, pt in zip(_word_tokens(source), _word_tokens(target), strict=True):
        if not ps or not pt:  # cut off by truncation: the target keeps its own columns
            continue
        if len(ps) == len(pt):
            for i, j in zip(ps, pt, strict=True):
                mapper[i, j] = 1.0
        else:  # e.g. "red" -> "cy" "an": each target token gets the source word's columns, shared out evenly
            for j in pt:
                mapper[ps, j] = 1.0 / len(pt)
        own[pt] = False
    _tail(source, target, mapper, own)
    return Alignment(mapper, own)


def _common_subsequence(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    """The longest common subsequence of two id lists, as (i, j) index pairs in order (dynamic programming)."""
    n, m = len(a), len(b)
    best = [[0] * (m + 1) for _ in range(n + 1)]  # best[i][j]: LCS length of a[i:], b[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = best[i + 1][j + 1] + 1 if a[i] == b[j] else max(best[i + 1][j], best[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def refinement(source: Encoding, target: Encoding) -> Alignment:
    """The alignment of prompt-to-prompt's *refine*: tokens the prompts share, in order, are aligned; the target's
    other tokens keep their own attention (p2p's `get_refinement_mapper`)."""
    m = len(target.ids)
    mapper, own = torch.zeros(m, m), torch.ones(m, dtype=torch.bool)
    # the prompts' own tokens, <|startoftext|> and <|endoftext|> included (not the padding)
    for i, j in _common_subsequence(source.ids[: source.length], target.ids[: target.length]):
        mapper[i, j], own[j] = 1.0, False
    _tail(source, target, mapper, own)
    return Alignment(mapper, own)
