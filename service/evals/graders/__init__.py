"""OpenAI's graders (string_check, text_similarity, score_model, label_model, python, multi)
as a library: parse and echo them, check their templates, grade one item with them.

Shared by the eval runs and the fine-tuning graders API (validate, run). It imports no web
framework and no torch: the API process validates graders with it, the eval worker grades.
"""

from service.evals.graders.grading import Embedder, GradingTools, Judge, check_supported, grade
from service.evals.graders.models import (
    GRADER_TYPES,
    Grader,
    InputMessage,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    eval_item,
    grader_to_dict,
    parse_grader,
    parse_messages,
)
from service.evals.graders.results import ERROR_DETAILS, ERROR_FLAGS, GradeResult, JudgeReply, make_sample, no_errors
from service.evals.graders.sandbox import PythonSandbox, SandboxResult
from service.evals.graders.templates import (
    chat_messages,
    check_messages_references,
    check_references,
    check_text_references,
    references,
    render,
    render_report,
)

__all__ = [
    "ERROR_DETAILS",
    "ERROR_FLAGS",
    "GRADER_TYPES",
    "Embedder",
    "GradeResult",
    "Grader",
    "GradingTools",
    "InputMessage",
    "Judge",
    "JudgeReply",
    "LabelModelGrader",
    "MultiGrader",
    "PythonGrader",
    "PythonSandbox",
    "SandboxResult",
    "ScoreModelGrader",
    "StringCheckGrader",
    "TextSimilarityGrader",
    "chat_messages",
    "check_messages_references",
    "check_references",
    "check_supported",
    "check_text_references",
    "eval_item",
    "grade",
    "grader_to_dict",
    "make_sample",
    "no_errors",
    "parse_grader",
    "parse_messages",
    "references",
    "render",
    "render_report",
]
