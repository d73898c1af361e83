"""Read, validate and tokenize an OpenAI fine-tuning JSONL file, one line at a time.

The first problem stops the read with a `DatasetError` whose message names the line and
the field, so the job fails with something the user can fix. Examples longer than the
model's context are truncated and reported as warnings, not errors.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.core.jsonl import JsonlError, iter_objects
from trainer.ml.chat_tokens import ChatRenderer, TemplateError, Tokenized
from trainer.ml.validation import ChatExample, FieldError, PreferenceExample, check_chat, check_preference

Method = Literal["supervised", "dpo"]
Which = Literal["training", "validation"]
MIN_TRAINING_EXAMPLES = 10


class DatasetError(Exception):
    """A training or validation file the job cannot use; maps onto the job's `error`."""

    def __init__(self, code: str, message: str, param: str | None = None, line: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.line = line


def _code(which: Which) -> str:
    return "invalid_training_file" if which == "training" else "invalid_validation_file"


def _param(which: Which) -> str:
    return f"{which}_file"


def iter_examples(path: Path, method: Method, which: Which = "training") -> Iterator[ChatExample | PreferenceExample]:
    """Validated examples in file order; blank lines are skipped. Streams: one line in memory."""
    check = check_chat if method == "supervised" else check_preference

    def fail(line: int, message: str) -> DatasetError:
        return DatasetError(_code(which), f"Line {line}: {message}", _param(which), line)

    try:
        for number, obj in iter_objects(path):
            try:
                yield check(obj, number)
            except FieldError as exc:
                raise fail(number, str(exc)) from None
    except JsonlError as exc:
        reason = {
            "not_utf8": "the line is not UTF-8 text",
            "not_json": f"not valid JSON ({exc.detail})",
            "not_object": f"expected a JSON object, got {exc.detail}",
        }[exc.problem]
        raise fail(exc.line, reason) from None


def _check_count(n: int, which: Which) -> None:
    if which == "training" and n < MIN_TRAINING_EXAMPLES:
        raise DatasetError(
            "invalid_n_examples",
            f"Training file has {n} example{'s' if n != 1 else ''}; at least {MIN_TRAINING_EXAMPLES} are required.",
            "training_file",
        )
    if n == 0:
        raise DatasetError(_code(which), "Validation file has no examples.", _param(which))


def validate_file(path: Path, method: Method, which: Which = "training") -> int:
    """Check every line without a tokenizer (fast); returns the number of examples."""
    n = sum(1 for _ in iter_examples(path, method, which))
    _check_count(n, which)
    return n


@dataclass
class SequenceExample:
    """One supervised example, tokenized. `line` points back into the user's file."""

    line: int
    tokens: Tokenized

    @property
    def n_tokens(self) -> int:
        return len(self.tokens.input_ids)


@dataclass
class PairExample:
    """One preference example: the same prompt with the preferred and the other reply."""

    line: int
    chosen: Tokenized
    rejected: Tokenized

    @property
    def n_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass(frozen=True)
class Profile:
    """What the data report needs of one example, beside its tokens."""

    line: int
    n_tokens: int  # before truncation
    prompt: str  # canonical JSON of everything before the trained reply
    answer: str  # the trained reply (DPO: the preferred one)
    system: str | None
    text: str  # every message's content, for near-duplicate search


@dataclass
class Dataset:
    method: Method
    examples: list[Any]  # SequenceExample for supervised, PairExample for dpo
    warnings: list[tuple[int, str]] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)  # every example read, trained or not
    truncated: list[tuple[int, int]] = field(default_factory=list)  # (line, tokens before truncation)
    untrainable: list[int] = field(default_factory=list)  # lines with no assistant tokens to train on
    max_seq_len: int = 0

    @property
    def n_tokens(self) -> int:
        return sum(e.n_tokens for e in self.examples)

    def __len__(self) -> int:
        return len(self.examples)


def _truncate(tok: Tokenized, max_len: int) -> Tokenized:
    return Tokenized(input_ids=tok.input_ids[:max_len], labels=tok.labels[:max_len])


def _tokenize_one(renderer: ChatRenderer, ex: ChatExample | PreferenceExample) -> list[Tokenized]:
    if isinstance(ex, ChatExample):
        return [renderer.tokenize(ex.messages, ex.trainable, ex.tools)]
    seqs = []
    for reply in (ex.chosen, ex.rejected):
        trainable = [False] * len(ex.prompt) + [True] * len(reply)
        seqs.append(renderer.tokenize(ex.prompt + reply, trainable, ex.tools))
    return seqs


def _profile(ex: ChatExample | PreferenceExample, n_tokens: int) -> Profile:
    if isinstance(ex, ChatExample):
        last = max((i for i, t in enumerate(ex.trainable) if t), default=len(ex.messages))
        prompt = [m.as_dict() for m in ex.messages[:last]]
        answer = ex.messages[last].as_dict() if last < len(ex.messages) else {}
        messages = ex.messages
    else:
        prompt, answer = [m.as_dict() for m in ex.prompt], {"chosen": [m.as_dict() for m in ex.chosen]}
        messages = ex.prompt + ex.chosen
    system = next((m.content for m in messages if m.role in ("system", "developer")), None)
    return Profile(
        line=ex.line,
        n_tokens=n_tokens,
        prompt=json.dumps([prompt, ex.tools], sort_keys=True),
        answer=json.dumps(answer, sort_keys=True),
        system=system,
        text="\n".join(m.content for m in messages),
    )


def load_dataset(path: Path, tokenizer: Any, method: Method, max_seq_len: int, which: Which = "training") -> Dataset:
    """Validate and tokenize a whole file; too-long examples are truncated with a warning,
    examples with nothing to train on are skipped with one."""
    try:
        renderer = ChatRenderer(tokenizer)
    except TemplateError as exc:
        raise DatasetError(_code(which), f"Cannot tokenize: {exc}.", _param(which)) from None
    data = Dataset(method=method, examples=[], max_seq_len=max_seq_len)
    n_read = 0
    for ex in iter_examples(path, method, which):
        n_read += 1
        try:
            seqs = _tokenize_one(renderer, ex)
        except TemplateError as exc:
            raise DatasetError(_code(which), f"Line {ex.line}: {exc}", _param(which), ex.line) from None
        longest = max(len(s.input_ids) for s in seqs)
        data.profiles.append(_profile(ex, longest))
        if any(s.n_trained == 0 for s in seqs):
            data.untrainable.append(ex.line)
            continue
        if longest > max_seq_len:
            data.truncated.append((ex.line, longest))
            seqs = [_truncate(s, max_seq_len) for s in seqs]
            if any(s.n_trained == 0 for s in seqs):
                data.warnings.append(
                    (
                        ex.line,
                        f"Line {ex.line}: {longest} tokens, over the limit of {max_seq_len}, and no assistant "
                        "tokens are left after truncation; the example is skipped",
                    )
                )
                continue
            # The report names every truncated example in one warning (trainer/ml/report.py).
        if method == "supervised":
            data.examples.append(SequenceExample(line=ex.line, tokens=seqs[0]))
        else:
            data.examples.append(PairExample(line=ex.line, chosen=seqs[0], rejected=seqs[1]))
    _check_count(n_read, which)
    if data.untrainable:
        data.warnings.append((data.untrainable[0], _untrainable_warning(data.untrainable, n_read)))
    if not data.examples and len(data.untrainable) == n_read:
        raise DatasetError(
            _code(which),
            f"No example of the {which} file has an assistant message to train on ({lines_text(data.untrainable)}); "
            "each example needs an assistant message with weight 1 (the default).",
            _param(which),
            data.untrainable[0],
        )
    if not data.examples:
        raise DatasetError(_code(which), f"No example of the {which} file fits in {max_seq_len} tokens.", _param(which))
    return data


def lines_text(lines: list[int], shown: int = 10) -> str:
    head = ", ".join(str(n) for n in lines[:shown])
    more = f" and {len(lines) - shown} more" if len(lines) > shown else ""
    return f"line{'s' if len(lines) > 1 else ''} {head}{more}"


def _untrainable_warning(lines: list[int], n_read: int) -> str:
    return (
        f"{len(lines)} of {n_read} examples {'has' if len(lines) == 1 else 'have'} no assistant message to train on and "
        f"{'is' if len(lines) == 1 else 'are'} skipped "
        f"({lines_text(lines)}); add an assistant reply with weight 1 (the default)"
    )


def split_validation(data: Dataset, count: int, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `count` examples as validation, seeded, keeping every example that shares
    a prompt on the same side (a duplicate in both halves would flatter the validation)."""
    groups: dict[str, list[int]] = {}
    prompt_of = {p.line: p.prompt for p in data.profiles}
    for i, ex in enumerate(data.examples):
        groups.setdefault(prompt_of.get(ex.line, str(ex.line)), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for members in order:
        if len(held) >= count:
            break
        held.update(members)
    train = Dataset(
        data.method,
        [e for i, e in enumerate(data.examples) if i not in held],
        data.warnings,
        data.profiles,
        data.truncated,
        data.untrainable,
        data.max_seq_len,
    )
    valid = Dataset(data.method, [e for i, e in enumerate(data.examples) if i in held], max_seq_len=data.max_seq_len)
    return train, valid
