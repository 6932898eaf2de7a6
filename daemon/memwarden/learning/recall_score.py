"""How a greedy answer is scored against the remembered one (plain text, no torch: the trainer and tests use it).

Key content of a response: its content words — lower-cased runs of letters and digits (Unicode-aware), without
the stop words below and without one-letter words, each counted once. A greedy answer recalls the response when
at least `KEY_CONTENT_SHARE` (80 %) of those words occur among the answer's words; a response with no content
word is recalled only by an answer with the same normalised words. Token accuracy is the share of the response's
tokens the model predicts exactly (argmax) when fed the true prefix — it is computed in the trainer.
"""

from __future__ import annotations

import re

KEY_CONTENT_SHARE = 0.8
_WORD = re.compile(r"[^\W_]+")
STOP_WORDS = frozenset((
    "a", "about", "above", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having",
    "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it",
    "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on",
    "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should",
    "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we",
    "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you",
    "your", "yours", "yourself", "yourselves"
))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def key_content(text: str) -> tuple[str, ...]:
    """The response's content words, in first-seen order, each once."""
    seen: dict[str, None] = {}
    for w in words(text):
        if len(w) > 1 and w not in STOP_WORDS:
            seen.setdefault(w, None)
    return tuple(seen)


def key_content_share(expected: str, answer: str) -> float:
    """Share of the expected response's content words present in the answer (0..1)."""
    key = key_content(expected)
    if not key:
        return 1.0 if words(expected) == words(answer) else 0.0
    have = set(words(answer))
    return sum(w in have for w in key) / len(key)


def recalled(expected: str, answer: str, share: float = KEY_CONTENT_SHARE) -> bool:
    return key_content_share(expected, answer) >= share


def token_accuracy(predicted: list[int] | tuple[int, ...], target: list[int] | tuple[int, ...]) -> float:
    """Share of positions where the predicted token equals the target (the lists align position by position)."""
    if len(predicted) != len(target):
        raise ValueError(f"token_accuracy: {len(predicted)} predictions for {len(target)} targets")
    if not target:
        return 0.0
    return sum(p == t for p, t in zip(predicted, target, strict=True)) / len(target)
