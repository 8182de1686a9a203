"""The BFCL AST checker: one decoded call against its possible answers, per category, and one item's verdict."""

from __future__ import annotations

import re

from coalm.eval.base import EvalError, brief, clip
from coalm.eval.bfcl.coalm_style import bfcl_calls
from coalm.eval.bfcl.decode import _no_call, decode_ast, is_call_list
from coalm.eval.bfcl.prompts import RELEVANCE
from coalm.eval.bfcl.values import _JS_TYPES, java_value, js_value

_PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
             "dict": dict, "any": str}
_JAVA_TYPES = {"byte": int, "short": int, "integer": int, "float": float, "double": float, "long": int,
               "boolean": bool, "char": str, "Array": list, "ArrayList": list, "Set": set, "HashMap": dict,
               "Hashtable": dict, "Queue": list, "Stack": list, "String": str, "any": str}


def _fail(error_type: str, error: str) -> dict:
    return {"valid": False, "error": clip(error, 1000), "error_type": error_type}


_OK = {"valid": True, "error": None, "error_type": None}


def standardize(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _answer_type(accepted: list):
    return next((type(a) for a in accepted if a != ""), None)


def _type_check(param, value, accepted, expected, nested) -> tuple[dict, bool]:
    """-> (verdict, is_variable). A value of the answer's type (when that is not the declared one) is a variable."""
    ans_type = _answer_type(accepted)
    is_variable = ans_type is not None and ans_type != expected
    if type(value) is expected:
        if nested is None:
            return _OK, is_variable
        for item in accepted:
            if not isinstance(item, list) or all(_type_check(param, v, item, nested, None)[0]["valid"] for v in value):
                return _OK, is_variable
        if ans_type is not None and type(value) is ans_type:
            return _fail("type_error:nested", f"nested type check failed for {brief(param)}: {brief(value)}"), True
    elif ans_type is not None and type(value) is ans_type:
        return _OK, True
    return _fail("type_error:simple", f"incorrect type for {brief(param)}: expected {expected.__name__}, "
                                      f"got {type(value).__name__} ({brief(value)})"), is_variable


def _std_seq(seq):
    return [standardize(x) if isinstance(x, str) else x for x in seq]


def _check_string(param, value, accepted):
    if standardize(value) not in [standardize(a) for a in accepted if isinstance(a, str)]:
        return _fail("value_error:string",
                     f"invalid value for {brief(param)}: {brief(value)}; expected one of {brief(accepted)}")
    return _OK


def _check_list(param, value, accepted):
    options = [_std_seq(a) for a in accepted if isinstance(a, (list, str))]
    if _std_seq(list(value)) not in options:
        return _fail("value_error:list/tuple",
                     f"invalid value for {brief(param)}: {brief(value)}; expected one of {brief(accepted)}")
    return _OK


def _seq(accepted):
    # Accepted values are lists; a few Java answers give a bare string (kept: upstream then tests substrings/chars).
    return accepted if isinstance(accepted, (list, str)) else [accepted]


def _check_dict(param, value, accepted):
    result = _fail("dict_checker:unclear", f"no accepted dict for {brief(param)}")
    for option in accepted:
        if option == "" or not isinstance(option, dict):
            continue
        result = _OK
        for key, v in value.items():
            if key not in option:
                result = _fail("value_error:dict_key", f"unexpected dict key {brief(key)} in {brief(param)}")
                break
            if (standardize(v) if isinstance(v, str) else v) not in _std_seq(_seq(option[key])):
                result = _fail("value_error:dict_value", f"invalid value for {brief(key)} in {brief(param)}: "
                                                         f"{brief(v)}; expected one of {brief(option[key])}")
                break
        for key, v in option.items():
            if key not in value and "" not in _seq(v):
                result = _fail("value_error:dict_key", f"missing dict key {brief(key)} in {brief(param)}")
                break
        if result["valid"]:
            return _OK
    return result


def _check_list_of_dicts(param, value, accepted):
    result = _fail("list_dict_checker:unclear", f"no accepted list of dicts for {brief(param)}")
    for option in accepted:
        if len(value) != len(option):
            result = _fail("value_error:list_dict_count", f"wrong number of dicts in {brief(param)}")
            continue
        for v, o in zip(value, option):
            result = (_check_dict(param, v, [o]) if isinstance(v, dict)
                      else _fail("value_error:dict_value", f"{brief(param)} holds a non-dict {brief(v)}"))
            if not result["valid"]:
                break
        else:
            return _OK
    return result


def check_call(doc: dict, call: dict, answer: dict, language: str) -> dict:
    """One decoded call against one possible answer {name: {param: [accepted values]}} of the function `doc`."""
    accepted_params = next(iter(answer.values()))
    name = doc["name"]
    props = doc["parameters"]["properties"]
    if name not in call:
        return _fail("simple_function_checker:wrong_func_name", f"function {brief(name)} not found in the output")
    args = call[name]
    for p in doc["parameters"].get("required", []):
        if p not in args:
            return _fail("simple_function_checker:missing_required", f"missing required parameter {brief(p)}")
    for p, value in args.items():
        if p not in props or p not in accepted_params:
            return _fail("simple_function_checker:unexpected_param", f"unexpected parameter {brief(p)}")
        typ = props[p].get("type")
        item_type = props[p].get("items", {}).get("type")
        accepted = accepted_params[p]
        nested = None
        if language in ("Java", "JavaScript"):
            table, convert = (_JAVA_TYPES, java_value) if language == "Java" else (_JS_TYPES, js_value)
            if typ not in table:
                return _fail("type_error:unknown", f"{language} type {brief(typ)} of {brief(p)} is not supported")
            expected = table[typ]
            if not isinstance(value, str):
                err = "type_error:java" if language == "Java" else "type_error:js"
                return _fail(err, f"incorrect type for {brief(p)}: expected String, got {type(value).__name__}")
            if typ in ("Array", "ArrayList", "array"):
                nested = table.get(item_type)
                value = convert(value, typ, item_type)
            else:
                value = convert(value, typ)
        else:
            expected = _PY_TYPES.get(typ)
            if expected is None:
                return _fail("type_error:unknown", f"type {brief(typ)} of {brief(p)} is not supported")
            if typ in ("array", "tuple"):
                nested = _PY_TYPES.get(item_type)
        if typ == "tuple" and isinstance(value, tuple):
            value = list(value)  # answers went through JSON, where tuples become lists
        if language == "Python" and typ == "float" and type(value) is int:
            value = float(value)
        verdict, is_variable = _type_check(p, value, accepted, expected, nested)
        if not verdict["valid"]:
            return verdict
        if not is_variable:
            if expected is dict:
                verdict = _check_dict(p, value, accepted)
            elif expected is list and nested is dict:
                verdict = _check_list_of_dicts(p, value, accepted)
            elif expected is str:
                verdict = _check_string(p, value, accepted)
            elif expected is list:
                verdict = _check_list(p, value, accepted)
            else:
                verdict = None
            if verdict is not None:
                if not verdict["valid"]:
                    return verdict
                continue
        if value not in accepted:
            return _fail("value_error:others",
                         f"invalid value for {brief(p)}: {brief(value)}; expected one of {brief(accepted)}")
    for p, accepted in accepted_params.items():
        if p not in args and "" not in accepted:
            return _fail("simple_function_checker:missing_optional",
                         f"optional parameter {brief(p)} not provided and not marked as optional")
    return _OK


def _find_doc(functions, name):
    return next((f for f in functions if f["name"] == name), None)


def check_calls(functions: list, calls: list, answers: list, language: str, category: str) -> dict:
    """The per-category checker: simple, multiple, or parallel (order-free greedy matching)."""
    if "parallel" in category:
        if len(calls) != len(answers):
            return _fail("parallel_function_checker_no_order:wrong_count",
                         f"{len(calls)} calls, expected {len(answers)}")
        matched = set()
        for i, answer in enumerate(answers):
            doc = _find_doc(functions, next(iter(answer)))
            found = None
            for j, call in enumerate(calls):
                if j not in matched and doc is not None and check_call(doc, call, answer, language)["valid"]:
                    found = j
                    break
            if found is None:
                return _fail("parallel_function_checker_no_order:cannot_find_match",
                             f"no call in the output matches answer #{i} ({next(iter(answer))})")
            matched.add(found)
        return _OK
    if "multiple" in category:
        if len(calls) != len(answers):
            return _fail("multiple_function_checker:wrong_count", f"{len(calls)} calls, expected {len(answers)}")
        doc = _find_doc(functions, next(iter(answers[0])))
        if doc is None:
            raise EvalError(f"possible answer names {next(iter(answers[0]))!r}, which is not among the functions")
        return check_call(doc, calls[0], answers[0], language)
    if len(calls) != 1:
        return _fail("simple_function_checker:wrong_count", f"{len(calls)} calls, expected 1")
    return check_call(functions[0], calls[0], answers[0], language)


def _decode(example: dict, result, language: str):
    """The item's prompt style decides the parser: Python call syntax (official) or the LA JSON list (coalm)."""
    return bfcl_calls(result) if example.get("style") == "coalm" else decode_ast(result, language)


def score_item(example: dict, result) -> dict:
    """-> {"valid", "error", "error_type"} for one example and its raw model output."""
    cat = example["category"]
    if cat in RELEVANCE:
        try:
            called = not _no_call(_decode(example, result, "Python"))
        except Exception:  # noqa: BLE001 - any decoding failure means "no call", as upstream
            called = False
        if cat == "live_relevance":
            return _OK if called else _fail("relevance_error:decoder_failed", "expected a function call, got none")
        return _fail("irrelevance_error:decoder_success", "made a function call where none fits") if called else _OK
    language = {"java": "Java", "javascript": "JavaScript"}.get(cat, "Python")
    try:
        calls = _decode(example, result, language)
    except Exception as e:  # noqa: BLE001 - model output is arbitrary text; every failure is a decoder failure
        return _fail("ast_decoder:decoder_failed",
                     f"invalid syntax, failed to decode: {type(e).__name__}: {clip(str(e))}")
    if not is_call_list(calls):
        return _fail("ast_decoder:decoder_wrong_output_format", "did not output a list of function calls")
    return check_calls(example["functions"], calls, example["answer"], language, cat)

