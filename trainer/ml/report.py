"""The data report a job shows at `validating_files` (and `tailor data check` prints): what
is in the training file and what in it will hurt, before any GPU time is spent.

Pure Python over the tokenized dataset (trainer/ml/data.py); no torch. Near duplicates are
found with rapidfuzz (C++) on the text of each example, all pairs up to FUZZY_LIMIT
examples and by normalized text beyond that.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from typing import Any

from trainer.ml.data import Dataset, Profile, lines_text

FUZZY_LIMIT = 3_000
NEAR_DUPLICATE_SCORE = 95  # rapidfuzz ratio, 0..100
SHOWN_SYSTEM_PROMPTS = 5


def _percentile(sorted_values: list[int], share: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, round(share * (len(sorted_values) - 1)))]


def _normalized(profile: Profile) -> str:
    return re.sub(r"[\W_]+", " ", profile.text.lower()).strip()


def _groups(keys: dict[int, str]) -> list[list[int]]:
    by_key: dict[str, list[int]] = defaultdict(list)
    for line, key in keys.items():
        by_key[key].append(line)
    return sorted((sorted(lines) for lines in by_key.values() if len(lines) > 1), key=lambda g: g[0])


def _near_duplicates(profiles: list[Profile], exact: list[list[int]]) -> list[list[int]]:
    """Groups of examples that differ only slightly (case, punctuation, a word), exact
    duplicates left out (they are reported apart)."""
    exact_twins = {line for group in exact for line in group[1:]}
    candidates = [p for p in profiles if p.line not in exact_twins]
    texts = [_normalized(p) for p in candidates]
    parent = list(range(len(candidates)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if len(candidates) <= FUZZY_LIMIT:
        from rapidfuzz import fuzz, process

        scores = process.cdist(texts, texts, scorer=fuzz.ratio, score_cutoff=NEAR_DUPLICATE_SCORE, dtype="uint8")
        for i, j in zip(*scores.nonzero(), strict=True):
            if i < j:
                parent[root(int(j))] = root(int(i))
    else:
        first: dict[str, int] = {}
        for i, text in enumerate(texts):
            parent[i] = first.setdefault(text, i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(candidates):
        groups[root(i)].append(p.line)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _conflicts(profiles: list[Profile]) -> list[dict[str, Any]]:
    """The same prompt answered differently: the model cannot learn both."""
    by_prompt: dict[str, list[Profile]] = defaultdict(list)
    for p in profiles:
        by_prompt[p.prompt].append(p)
    out = []
    for group in by_prompt.values():
        answers = {p.answer for p in group}
        if len(answers) > 1:
            out.append({"lines": sorted(p.line for p in group), "answers": len(answers)})
    return sorted(out, key=lambda c: c["lines"][0])


def build(
    data: Dataset,
    *,
    n_epochs: int,
    validation: dict[str, Any] | None = None,
    tokens_per_second: float | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict; `warnings` holds the sentences worth an event."""
    profiles = data.profiles
    lengths = sorted(p.n_tokens for p in profiles) or [0]
    trained_tokens = data.n_tokens
    exact = _groups({p.line: f"{p.prompt}\n{p.answer}" for p in profiles})
    near = _near_duplicates(profiles, exact)
    conflicts = _conflicts(profiles)
    systems = Counter(p.system for p in profiles if p.system)
    billed = trained_tokens * n_epochs
    report: dict[str, Any] = {
        "object": "fine_tuning.data_report",
        "examples": len(profiles),
        "trained_examples": len(data.examples),
        "tokens_per_example": {
            "min": lengths[0],
            "median": int(statistics.median(lengths)),
            "p95": _percentile(lengths, 0.95),
            "max": lengths[-1],
        },
        "context_length": data.max_seq_len,
        "truncated": [{"line": line, "tokens": n} for line, n in data.truncated],
        "exact_duplicates": exact,
        "near_duplicates": near,
        "no_trainable_turn": list(data.untrainable),
        "conflicting_answers": conflicts,
        "system_prompts": [{"text": text[:200], "examples": n} for text, n in systems.most_common(SHOWN_SYSTEM_PROMPTS)],
        "distinct_system_prompts": len(systems),
        "validation": validation,
        "n_epochs": n_epochs,
        "trained_tokens_per_epoch": trained_tokens,
        "billed_tokens": billed,
        "tokens_per_second": round(tokens_per_second, 1) if tokens_per_second else None,
        "estimated_seconds": round(billed / tokens_per_second) if tokens_per_second else None,
    }
    report["warnings"] = _warnings(report)
    return report


def _warnings(r: dict[str, Any]) -> list[str]:
    out = []
    if r["truncated"]:
        lines = [t["line"] for t in r["truncated"]]
        out.append(
            f"{_examples(len(lines))} longer than the model's context of {r['context_length']} tokens and will be "
            f"truncated ({lines_text(lines)})"
        )
    if r["exact_duplicates"]:
        n = sum(len(g) - 1 for g in r["exact_duplicates"])
        shown = "; ".join(lines_text(g) for g in r["exact_duplicates"][:5])
        what = "1 example is an exact duplicate of another" if n == 1 else f"{n} examples are exact duplicates of others"
        out.append(f"{what} ({shown}); duplicates weigh those examples more")
    if r["near_duplicates"]:
        shown = "; ".join(lines_text(g) for g in r["near_duplicates"][:5])
        out.append(f"{len(r['near_duplicates'])} groups of near-duplicate examples ({shown})")
    if r["conflicting_answers"]:
        shown = "; ".join(lines_text(c["lines"]) for c in r["conflicting_answers"][:5])
        out.append(
            f"{len(r['conflicting_answers'])} prompts are answered differently in different examples ({shown}); "
            "the model cannot learn both answers"
        )
    return out


def _examples(n: int) -> str:
    return "1 example is" if n == 1 else f"{n} examples are"


def summary(r: dict[str, Any]) -> str:
    """One line for the job's events and the CLI."""
    t = r["tokens_per_example"]
    parts = [
        f"Data report: {r['examples']} examples, tokens per example min {t['min']} / median {t['median']} / "
        f"p95 {t['p95']} / max {t['max']}",
        f"{r['billed_tokens']:,} billed tokens ({r['trained_tokens_per_epoch']:,} x {r['n_epochs']} epochs)",
    ]
    if r["distinct_system_prompts"]:
        parts.append(f"{r['distinct_system_prompts']} distinct system prompt{'s' if r['distinct_system_prompts'] > 1 else ''}")
    if r["estimated_seconds"] is not None:
        parts.append(f"estimated {_duration(r['estimated_seconds'])} on this worker ({r['tokens_per_second']:.0f} tokens/s)")
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
