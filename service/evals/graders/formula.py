"""The `calculate_output` formula of a multi grader: arithmetic over the sub-graders' scores.

OpenAI's syntax: the sub-graders' names as variables, numbers, `+ - * /`, `^` (and `**`) for
power, parentheses, and the functions min, max, abs, floor, ceil, exp, sqrt, log (natural).
A formula is checked against a whitelist of syntax nodes when the grader is parsed, then
evaluated by `simpleeval` with only those operators and functions, never by Python's `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

MAX_FORMULA_LENGTH = 2000
# Exponents past this are refused: a score formula has no use for them, and they cost time.
MAX_EXPONENT = 100.0


class FormulaError(ValueError):
    """The formula does not parse, or uses something that is not arithmetic over the names."""


class UnknownVariable(FormulaError):
    """The formula names a variable that is not one of the sub-graders."""


def _power(base: float, exponent: float) -> float:
    # math.pow refuses complex results ((-8) ^ 0.5) and overflows loudly instead of making huge ints.
    if abs(exponent) > MAX_EXPONENT:
        raise FormulaError(f"exponent {exponent:g} is too large (at most {MAX_EXPONENT:g})")
    return math.pow(base, exponent)


def _min(*args: float) -> float:
    if not args:
        raise FormulaError("min() needs at least one argument")
    return float(min(args))


def _max(*args: float) -> float:
    if not args:
        raise FormulaError("max() needs at least one argument")
    return float(max(args))


FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": _min,
    "max": _max,
    "abs": lambda x: float(abs(x)),
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
# How many arguments each function takes (None: one or more).
_ARITY: dict[str, int | None] = {"min": None, "max": None, "abs": 1, "floor": 1, "ceil": 1, "exp": 1, "sqrt": 1, "log": 1}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _describe(node: ast.AST) -> str:
    return {
        ast.Attribute: "attribute access",
        ast.Subscript: "indexing",
        ast.Compare: "comparisons",
        ast.BoolOp: "and/or",
        ast.IfExp: "if/else",
        ast.Lambda: "lambda",
        ast.Constant: "non-numeric constants",
    }.get(type(node), type(node).__name__)


def _python_syntax(formula: str) -> str:
    # OpenAI's `^` is power. Python's `^` is exclusive or, with a lower precedence than `*`
    # (`2 * a ^ 2` would read as `(2 * a) ^ 2`), so it becomes `**`; a formula has no strings.
    return formula.strip().replace("^", "**")


def parse(formula: str, variables: Collection[str]) -> ast.Expression:
    """Parse and check a formula; raises FormulaError (UnknownVariable for an unknown name)."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("the formula is empty")
    if len(formula) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_LENGTH} characters")
    try:
        tree = ast.parse(_python_syntax(formula), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"the formula does not parse: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression | ast.Load):
            continue
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise FormulaError(f"operator {type(node.op).__name__} is not supported (use + - * / ^)")
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise FormulaError(f"operator {type(node.op).__name__} is not supported")
        elif isinstance(node, ast.operator | ast.unaryop):
            continue  # the operator nodes themselves, checked with their BinOp/UnaryOp
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FormulaError(f"only numbers may appear as constants, not {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS and not _is_called(tree, node):
                raise FormulaError(f"{node.id} is a function: call it as {node.id}(...)")
            if node.id not in FUNCTIONS and node.id not in variables:
                known = ", ".join(sorted(variables)) or "none"
                raise UnknownVariable(f"unknown variable '{node.id}' (the sub-graders are: {known})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise FormulaError(f"only these functions may be called: {', '.join(FUNCTIONS)}")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise FormulaError(f"{node.func.id}() takes plain positional arguments")
            arity = _ARITY[node.func.id]
            if (arity is None and not node.args) or (arity is not None and len(node.args) != arity):
                raise FormulaError(f"{node.func.id}() takes {arity or 'one or more'} argument(s)")
        else:
            raise FormulaError(f"{_describe(node)} is not allowed in a formula")
    return tree


def _is_called(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def evaluate(formula: str, values: Mapping[str, float]) -> float:
    """The formula's value over `values`; raises FormulaError for anything but a finite number."""
    from simpleeval import SimpleEval  # light, but only the eval worker needs it

    tree = parse(formula, values.keys())
    operators: dict[Any, Any] = {**_BINARY, **_UNARY}
    # No attribute access at all, not even the few that simpleeval allows by default.
    no_attributes: dict[type, set[str]] = {}
    evaluator = SimpleEval(
        operators=operators,
        functions=dict(FUNCTIONS),
        names={k: float(v) for k, v in values.items()},
        allowed_attrs=no_attributes,
    )
    try:
        result = evaluator.eval(_python_syntax(formula), previously_parsed=tree.body)
    except FormulaError:
        raise
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise FormulaError(f"the formula could not be computed: {exc}") from None
    except Exception as exc:  # simpleeval's own refusals (InvalidExpression and friends)
        raise FormulaError(f"the formula could not be computed: {exc}") from None
    if isinstance(result, bool) or not isinstance(result, int | float) or not math.isfinite(result):
        raise FormulaError(f"the formula gave {result!r}, not a finite number")
    return float(result)
