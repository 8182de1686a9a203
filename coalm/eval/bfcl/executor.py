"""Multi-turn execution: bfcl-eval's API backends driven by parsed calls, never by `eval`.

The backends (file system, math, messages, posting, tickets, trading, travel, vehicle) are the classes the
`bfcl-eval==2025.6.8` package ships, imported from it. What is reproduced here, from that release's
`multi_turn_utils.execute_multi_turn_func_call` and the prompt handlers' `decode_execute`:

- model text -> decoded calls (the single-turn decoder) -> one call string per call, as the official
  `decoded_output_to_execution_list` renders them (values by `repr`; a dict whose values are all dicts is a nested
  call, so `f(x={'g': {}})` runs `g()` first; an empty dict fails the decoding);
- each call string is parsed with `ast` and run against the item's live instances: a call name resolves to a public
  method of one of the item's classes (the last class wins on a shared name, as upstream); anything else (unknown,
  private or dunder names, attributes such as `os.system`, names of another backend) answers with the error text
  the official `eval` would give, e.g. "Error during execution: name 'os' is not defined";
- results become strings as upstream (dict -> `json.dumps`, else `str`); a backend exception becomes
  "Error during execution: <message>".

Bounds the official executor lacks (a scorer's input is adversarial): integer powers and decimal precision that
would take seconds are refused with an error result, each call runs in its own decimal context (upstream's
`square_root` sets the thread's global precision), values deeper than 100 levels and steps of more than 1,000
calls fail to decode.
"""

from __future__ import annotations

import ast
import copy
import decimal
import inspect
import json
import warnings

from coalm.eval.base import EvalError
from coalm.eval.bfcl.decode import decode_ast, is_call_list

# Upstream refuses these names before its `eval` (they are not backend methods in any case).
_BLOCKED = ("kill", "exit", "quit", "remove", "unlink", "popen", "Popen", "run")
_MAX_DEPTH = 100
MAX_CALLS = 1000  # calls in one step (a bound upstream lacks: each one runs on the live instances)
_MAX_BITS = 100_000


def _upstream():
    try:
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    except ImportError as e:
        raise EvalError(f"BFCL multi-turn needs the bfcl-eval backends ({e}); install them with "
                        "`pip install --no-deps bfcl-eval==2025.6.8`") from None
    return multi_turn_utils.CLASS_FILE_PATH_MAPPING, multi_turn_utils.STATELESS_CLASSES


def class_doc_files() -> dict[str, str]:
    """API class -> its function-doc file name (upstream names the doc file after the class's module)."""
    mapping, _ = _upstream()
    return {cls: mod.rsplit(".", 1)[1] + ".json" for cls, mod in mapping.items()}


class ExecError(Exception):
    """What the official `eval` would have raised; its text becomes the call's result."""


class Backends:
    """The live API instances of one item, built from its initial_config as upstream does."""

    def __init__(self, involved_classes: list, initial_config: dict, long_context: bool):
        import importlib

        mapping, stateless = _upstream()
        self.instances, self.methods = {}, {}
        for name in involved_classes:
            if name not in mapping:
                raise EvalError(f"unknown BFCL API class {name!r}; bfcl-eval has {', '.join(mapping)}")
            inst = getattr(importlib.import_module(mapping[name]), name)()
            if name not in stateless:
                inst._load_scenario(copy.deepcopy(initial_config.get(name, {})), long_context=long_context)
            self.instances[name] = inst
            for meth, bound in inspect.getmembers(inst, predicate=inspect.ismethod):
                if not meth.startswith("_"):
                    self.methods[meth] = (name, bound)

    def execute(self, call_strings: list[str]) -> list[str]:
        return [self.execute_one(c) for c in call_strings]

    def execute_one(self, call: str) -> str:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(call, mode="eval").body
            head = call.split("(")[0].split(".")[-1]
            if head in _BLOCKED:
                raise ExecError(f"Function call {head} is not allowed.")
            with decimal.localcontext():
                result = self._value(tree, 0)
        except Exception as e:  # noqa: BLE001 - every failure of a call is its result, as upstream
            return f"Error during execution: {e}"
        if isinstance(result, str):
            return result
        if isinstance(result, dict):
            try:
                return json.dumps(result)
            except Exception:  # noqa: BLE001 - upstream falls back to str() for unserialisable results
                return str(result)
        return str(result)

    def _value(self, node, depth: int):
        if depth > _MAX_DEPTH:
            raise ExecError("value nested too deeply")
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self._value(e, depth + 1) for e in node.elts]
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise ExecError("dict unpacking is not supported")
            return {self._value(k, depth + 1): self._value(v, depth + 1) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self._value(node.operand, depth + 1)
            if type(v) not in (int, float, complex):
                raise ExecError(f"bad operand type for unary {type(node.op).__name__}: '{type(v).__name__}'")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            # repr() of a complex number is "(1+2j)"; nothing else renders as an operation.
            a, b = self._value(node.left, depth + 1), self._value(node.right, depth + 1)
            if not all(type(x) in (int, float, complex) for x in (a, b)):
                raise ExecError("unsupported operand types")
            return a + b if isinstance(node.op, ast.Add) else a - b
        if isinstance(node, ast.Name):
            raise ExecError(f"name '{node.id}' is not defined")
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        raise ExecError(f"unsupported expression {type(node).__name__}")

    def _call(self, node: ast.Call, depth: int):
        func = node.func
        if isinstance(func, ast.Attribute):
            while isinstance(func, ast.Attribute):
                func = func.value
            if isinstance(func, ast.Name):
                raise ExecError(f"name '{func.id}' is not defined")
            raise ExecError("call target is not a function name")
        if not isinstance(func, ast.Name):
            raise ExecError("call target is not a function name")
        if func.id not in self.methods:
            raise ExecError(f"name '{func.id}' is not defined")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ExecError("argument unpacking is not supported")
        names = [k.arg for k in node.keywords]
        if len(set(names)) != len(names):
            raise ExecError("keyword argument repeated")  # a SyntaxError for upstream's eval
        args = [self._value(a, depth + 1) for a in node.args]
        kwargs = {k.arg: self._value(k.value, depth + 1) for k in node.keywords}
        _, method = self.methods[func.id]
        _refuse_costly(method, args, kwargs)
        return method(*args, **kwargs)


def _refuse_costly(method, args: list, kwargs: dict) -> None:
    """Calls whose cost is unbounded in their arguments (MathAPI's power and square_root)."""
    if method.__name__ not in ("power", "square_root"):
        return
    try:
        bound = inspect.signature(method).bind(*args, **kwargs).arguments
    except TypeError:
        return  # the call itself raises the official message
    base, exp, prec = bound.get("base"), bound.get("exponent"), bound.get("precision")
    if type(base) is int and type(exp) is int and abs(exp) * max(1, abs(base).bit_length()) > _MAX_BITS:
        raise ExecError("result too large")
    if type(prec) is int and prec > 10_000:
        raise ExecError("precision too large")


# ---------------------------------------------------------------- model text -> call strings (decode_execute)

def _render(value, depth: int = 0) -> str:
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if isinstance(value, dict):
        if all(isinstance(v, dict) for v in value.values()):
            if not value:
                raise ValueError("empty dict")  # upstream's list(value)[0] raises: the decoding fails
            name = next(iter(value))
            return f"{name}({', '.join(f'{k}={_render(v, depth + 1)}' for k, v in value[name].items())})"
        return "{" + ", ".join(f"'{k}': {_render(v, depth + 1)}" for k, v in value.items()) + "}"
    return repr(value)


def decode_execute(text) -> list[str]:
    """Model text -> the call strings to execute; raises when the text does not decode (the step then ends the
    turn during inference, and is skipped when scoring)."""
    decoded = decode_ast(text, "Python")
    if not is_call_list(decoded):
        raise ValueError("not a list of function calls")
    if len(decoded) > MAX_CALLS:
        raise ValueError(f"more than {MAX_CALLS} calls in one step")
    return [f"{name}({', '.join(f'{k}={_render(v)}' for k, v in args.items())})"
            for call in decoded for name, args in call.items()]
