"""Grading one item (and its sample) with one grader, for eval runs and the graders API.

`grade` never raises for what the graded data or the judge does: a judge that fails, a reply
that holds no score, Python that crashes, a formula that divides by zero all come back as
score 0 with the matching RunGraderResponse error flag. It raises InvalidRequest only for
what the server cannot do at all (python graders disabled, no embedder for cosine, no judge),
which `check_supported` refuses up front when the grader is created.

Pass rules: `passed` is score >= pass_threshold; without one, text_similarity and python
pass at 1.0 (a perfect score) and score_model at the middle of its range (`models.
default_pass_threshold`); string_check passes at 1; label_model passes when the label is one
of passing_labels; multi passes when every sub-grader passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.core.errors import InvalidRequest
from service.evals.graders import formula, judging, metrics
from service.evals.graders.models import (
    Grader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    default_pass_threshold,
)
from service.evals.graders.results import GradeResult, JudgeReply, add_usage, merge_errors, merge_usage, no_errors
from service.evals.graders.sandbox import PythonSandbox
from service.evals.graders.templates import chat_messages_report, render_report

log = logging.getLogger(__name__)

# (model, chat messages, sampling parameters) -> the judge's reply. The caller makes the
# HTTP call (a model Tailor serves, or the configured judge endpoint).
Judge = Callable[[str, list[dict[str, str]], dict[str, Any]], Awaitable[JudgeReply]]
Embedder = metrics.Embedder

PYTHON_DISABLED = "python graders are disabled on this server: the operator enables them with the setting TAILOR_PYTHON_GRADER=1."


@dataclass
class GradingTools:
    """What grading may call on: the judge for model graders, the embedder for the cosine
    metric, the sandbox for python graders. None: this server does not offer it."""

    judge: Judge | None = None
    embed: Embedder | None = None
    python: PythonSandbox | None = None


def check_supported(
    grader: Grader, *, param: str, python_enabled: bool, cosine_enabled: bool, judge_enabled: bool = True
) -> None:
    """Refuse (400) a grader this server cannot run, when it is created rather than at run time."""
    if isinstance(grader, PythonGrader) and not python_enabled:
        raise InvalidRequest(PYTHON_DISABLED, param=param)
    if isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric == "cosine" and not cosine_enabled:
        raise InvalidRequest(
            "evaluation_metric 'cosine' is not available on this server (no embedding model is installed).",
            param=f"{param}.evaluation_metric",
        )
    if isinstance(grader, ScoreModelGrader | LabelModelGrader) and not judge_enabled:
        raise InvalidRequest(f"{grader.type} graders need a judge model, and this server has none.", param=param)
    if isinstance(grader, MultiGrader):
        for name, sub in grader.named().items():
            where = f"{param}.graders.{name}" if isinstance(grader.graders, dict) else f"{param}.graders"
            check_supported(
                sub, param=where, python_enabled=python_enabled, cosine_enabled=cosine_enabled, judge_enabled=judge_enabled
            )


def _result(grader: Grader, score: float, passed: bool, **kwargs: Any) -> GradeResult:
    return GradeResult(score=score, passed=passed, name=grader.name, type=grader.type, **kwargs)


def _failed(grader: Grader, flag: str, details: tuple[str, str] | None = None, **kwargs: Any) -> GradeResult:
    errors = no_errors()
    errors[flag] = True
    if details is not None:
        errors[details[0]] = details[1]
    return _result(grader, 0.0, False, errors=errors, **kwargs)


async def grade(
    grader: Grader,
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
    tools: GradingTools,
    *,
    param: str = "grader",
) -> GradeResult:
    """Grade `item` (and `sample`, the model's output, where there is one) with `grader`."""
    item = dict(item)
    sample = dict(sample) if sample is not None else None
    try:
        if isinstance(grader, StringCheckGrader):
            return _string_check(grader, item, sample)
        if isinstance(grader, TextSimilarityGrader):
            return await _text_similarity(grader, item, sample, tools, param=param)
        if isinstance(grader, ScoreModelGrader | LabelModelGrader):
            return await _model_grader(grader, item, sample, tools, param=param)
        if isinstance(grader, PythonGrader):
            return await _python(grader, item, sample, tools, param=param)
        return await _multi(grader, item, sample, tools, param=param)
    except InvalidRequest:
        raise
    except Exception as exc:  # a library failing on odd input: this grade, not the run
        log.warning("grader %r (%s) failed: %s", grader.name, grader.type, exc, exc_info=True)
        return _failed(grader, "other_error")


def _string_check(grader: StringCheckGrader, item: dict[str, Any], sample: dict[str, Any] | None) -> GradeResult:
    text, missing = render_report(grader.input, item, sample)
    reference, lost = render_report(grader.reference, item, sample)
    # OpenAI documents like/ilike as "input contains reference" (case-sensitive / not), not
    # SQL patterns: `%` and `_` in a reference are plain characters, as in OpenAI.
    if grader.operation == "eq":
        ok = text == reference
    elif grader.operation == "ne":
        ok = text != reference
    elif grader.operation == "like":
        ok = reference in text
    else:
        ok = reference.casefold() in text.casefold()
    return _result(grader, 1.0 if ok else 0.0, ok, missing_references=missing + lost)


def _passes(grader: TextSimilarityGrader | ScoreModelGrader | PythonGrader, score: float) -> bool:
    threshold = grader.pass_threshold if grader.pass_threshold is not None else default_pass_threshold(grader)
    return score >= threshold


async def _text_similarity(
    grader: TextSimilarityGrader, item: dict[str, Any], sample: dict[str, Any] | None, tools: GradingTools, *, param: str
) -> GradeResult:
    text, missing = render_report(grader.input, item, sample)
    reference, lost = render_report(grader.reference, item, sample)
    if grader.evaluation_metric == "cosine":
        if tools.embed is None:
            raise InvalidRequest(
                "evaluation_metric 'cosine' is not available on this server (no embedding model is installed).",
                param=f"{param}.evaluation_metric",
            )
        # The embedder runs a model on the CPU: off the event loop.
        score = await asyncio.to_thread(metrics.similarity, "cosine", text, reference, embed=tools.embed)
    else:
        score = metrics.similarity(grader.evaluation_metric, text, reference)
    return _result(grader, score, _passes(grader, score), missing_references=missing + lost)


async def _model_grader(
    grader: ScoreModelGrader | LabelModelGrader,
    item: dict[str, Any],
    sample: dict[str, Any] | None,
    tools: GradingTools,
    *,
    param: str,
) -> GradeResult:
    if tools.judge is None:
        raise InvalidRequest(f"{grader.type} graders need a judge model, and this server has none.", param=param)
    messages, missing = chat_messages_report(grader.input, item, sample)
    if isinstance(grader, ScoreModelGrader):
        messages = judging.with_instruction(messages, judging.score_instruction(grader))
        sampling = judging.sampling(grader.sampling_params, "score", judging.score_schema(grader))
    else:
        messages = judging.with_instruction(messages, judging.label_instruction(grader))
        sampling = judging.sampling(None, "label", judging.label_schema(grader))
    judge_sample: dict[str, Any] = {"model": grader.model, "input": messages, "sampling_params": sampling}
    started = time.monotonic()
    try:
        reply = await tools.judge(grader.model, messages, sampling)
    except Exception as exc:
        judge_sample["error"] = f"{type(exc).__name__}: {exc}"
        return _failed(
            grader,
            "model_grader_server_error",
            ("model_grader_server_error_details", f"the judge model {grader.model!r} failed: {type(exc).__name__}: {exc}"),
            judge_sample=judge_sample,
            missing_references=missing,
        )
    usage: dict[str, dict[str, int]] = {}
    add_usage(usage, grader.model, reply.usage)
    judge_sample.update(
        output=[{"role": "assistant", "content": reply.text}],
        usage=dict(reply.usage),
        finish_reason=reply.finish_reason,
        seconds=round(time.monotonic() - started, 3),
    )
    common: dict[str, Any] = {"token_usage": usage, "judge_sample": judge_sample, "missing_references": missing}
    if reply.refusal:
        judge_sample["refusal"] = reply.refusal
        return _failed(grader, "model_grader_refusal_error", **common)
    try:
        if isinstance(grader, ScoreModelGrader):
            score = judging.parse_score(reply.text, grader)
            return _result(grader, score, _passes(grader, score), **common)
        label = judging.parse_label(reply.text, grader)
    except judging.ParseError as exc:
        judge_sample["parse_error"] = str(exc)
        return _failed(grader, "model_grader_parse_error", **common)
    judge_sample["label"] = label
    ok = label in grader.passing_labels
    return _result(grader, 1.0 if ok else 0.0, ok, **common)


async def _python(
    grader: PythonGrader, item: dict[str, Any], sample: dict[str, Any] | None, tools: GradingTools, *, param: str
) -> GradeResult:
    if tools.python is None:
        raise InvalidRequest(PYTHON_DISABLED, param=param)
    outcome = await tools.python.run(grader.source, sample, item)
    if outcome.server_error is not None:
        log.error("python grader sandbox failed (%s): %s", outcome.server_error, outcome.server_error_details)
        return _failed(grader, "python_grader_server_error", ("python_grader_server_error_type", outcome.server_error))
    if outcome.runtime_error is not None or outcome.score is None:
        details = outcome.runtime_error or "the python grader returned no score"
        return _failed(grader, "python_grader_runtime_error", ("python_grader_runtime_error_details", details))
    return _result(grader, outcome.score, _passes(grader, outcome.score))


async def _multi(
    grader: MultiGrader, item: dict[str, Any], sample: dict[str, Any] | None, tools: GradingTools, *, param: str
) -> GradeResult:
    named = grader.named()
    prefix = f"{param}.graders"
    results = await asyncio.gather(
        *(
            grade(sub, item, sample, tools, param=f"{prefix}.{name}" if isinstance(grader.graders, dict) else prefix)
            for name, sub in named.items()
        )
    )
    subs = dict(zip(named, results, strict=True))
    errors = no_errors()
    usage: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    for result in results:
        merge_errors(errors, result.errors)
        merge_usage(usage, result.token_usage)
        missing.extend(result.missing_references)
    sub_rewards = {name: result.score for name, result in subs.items()}
    judged = {name: result.judge_sample for name, result in subs.items() if result.judge_sample is not None}
    common: dict[str, Any] = {
        "sub_rewards": sub_rewards,
        "token_usage": usage,
        "missing_references": missing,
        "judge_sample": {"graders": judged} if judged else None,
    }
    try:
        formula.parse(grader.calculate_output, sub_rewards.keys())
    except formula.UnknownVariable:
        errors["invalid_variable_error"] = True
        return _result(grader, 0.0, False, errors=errors, **common)
    except formula.FormulaError:
        errors["formula_parse_error"] = True
        return _result(grader, 0.0, False, errors=errors, **common)
    try:
        score = formula.evaluate(grader.calculate_output, sub_rewards)
    except formula.FormulaError as exc:
        log.info("multi grader %r: %s", grader.name, exc)
        errors["other_error"] = True
        return _result(grader, 0.0, False, errors=errors, **common)
    return _result(grader, score, all(r.passed for r in results), errors=errors, **common)
