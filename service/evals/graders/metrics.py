"""The text_similarity metrics, each a score in [0, 1] from (input, reference).

They come from the libraries that define them, imported on first use (the API process
validates graders without ever computing one):

- fuzzy_match: rapidfuzz `fuzz.ratio(input, reference) / 100` (normalised Indel
  similarity), case-sensitive. OpenAI documents only "fuzzy string match using rapidfuzz";
  WRatio, which also takes the best partial match, scored a wrong answer that merely shares
  the reference's opening words at 0.86 ("The capital of X is X." against "The capital of X
  is Y, a city famous for ..."), where the plain ratio gives 0.59.
- bleu: sacrebleu's sentence BLEU / 100, with its defaults (13a tokenizer, case-sensitive,
  exponential smoothing, effective order), the reference as the one reference.
- gleu: nltk's `sentence_gleu` (Google BLEU, 1- to 4-grams) over word tokens.
- meteor: nltk's `meteor_score` over word tokens, lower-cased, with exact and Porter-stem
  matching only. Its third stage, WordNet synonyms, needs nltk's WordNet corpus, which no
  package ships and nothing may download here, so nltk is handed a WordNet that knows no
  synonyms: a pair that differs only by synonyms scores lower than on OpenAI.
- rouge_1 .. rouge_5, rouge_l: rouge-score's F-measure, the reference as the target, no
  stemming. Tokens are lower-cased runs of letters and digits: rouge-score's own tokenizer
  for ASCII text, but Unicode-aware (its own drops every non-ASCII letter).
- cosine: the cosine of the two texts' embeddings, from the embedder the server supplies
  (OpenAI uses text-embedding-3-large; here a local sentence-embedding model), floored at 0.

Two empty texts score 1.0 and one empty text 0.0 under every metric, before any library
sees them (their edge cases differ and some divide by zero).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

Embedder = Callable[[list[str]], list[list[float]]]

TOKEN_METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


class MetricUnavailable(RuntimeError):
    """The metric needs something this server does not have (an embedder for cosine)."""


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(text, reference)) / 100.0


def bleu(text: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100.0


@lru_cache(maxsize=1)
def _word_tokenizer() -> Any:
    # nltk's word_tokenize without its sentence splitter, which needs the punkt data files.
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def words(text: str) -> list[str]:
    return list(_word_tokenizer().tokenize(text))


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([words(reference)], words(text)))


class _NoSynonyms:
    """A WordNet for nltk's METEOR that knows no word: its synonym stage then matches nothing."""

    def synsets(self, *_args: Any, **_kwargs: Any) -> list[Any]:
        return []


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([words(reference)], words(text), wordnet=_NoSynonyms()))


_ROUGE_KEYS = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
_ROUGE_TOKEN = re.compile(r"[^\W_]+")


class _RougeTokenizer:
    """rouge-score's tokenization (lower-case, runs of letters and digits), Unicode-aware."""

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN.findall(text.lower())


@lru_cache(maxsize=8)
def _rouge_scorer(key: str) -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer([key], use_stemmer=False, tokenizer=_RougeTokenizer())


def rouge(metric: str, text: str, reference: str) -> float:
    key = _ROUGE_KEYS[metric]
    return float(_rouge_scorer(key).score(reference, text)[key].fmeasure)


def cosine_of(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norm == 0.0:
        return 0.0
    return max(0.0, min(1.0, dot / norm))


def cosine(text: str, reference: str, embed: Embedder | None) -> float:
    if embed is None:
        raise MetricUnavailable("evaluation_metric 'cosine' is not available on this server (no embedding model)")
    vectors = embed([text, reference])
    return cosine_of(vectors[0], vectors[1])


def similarity(metric: str, text: str, reference: str, *, embed: Embedder | None = None) -> float:
    """The metric's score of `text` against `reference`, in [0, 1]."""
    if metric == "cosine":
        if not text and not reference:
            return 1.0
        if not text or not reference:
            return 0.0
        return cosine(text, reference, embed)
    if not text.strip() and not reference.strip():
        return 1.0
    if not text.strip() or not reference.strip():
        return 0.0
    if metric == "fuzzy_match":
        return fuzzy_match(text, reference)
    if metric == "bleu":
        return bleu(text, reference)
    if metric == "gleu":
        return gleu(text, reference)
    if metric == "meteor":
        return meteor(text, reference)
    if metric in _ROUGE_KEYS:
        return rouge(metric, text, reference)
    raise ValueError(f"unknown evaluation_metric {metric!r}")
