"""API-Bank calls: parsing model output as the official evaluator does, and comparing a parsed call with the gold
call under the per-API value rules (the offline stand-in for the official back-end execution; see
`coalm.eval.api_bank`'s docstring for the rules and the known departures). Nothing here evaluates model text."""

from __future__ import annotations

import datetime as _dt
import json
import re

from coalm.eval.base import clip

_CALL_RE = re.compile(r"\[(\w+)\((.*)\)\]")  # the official pattern; matched in linear time by `_call_match`
_CALL_OPEN = re.compile(r"\[(\w+)\(")
# The official parameter pattern, plus `(?<!\w)`: a name never starts inside a word (if the whole word cannot be
# followed by "=", no suffix of it can), so the matches are the same and a long argument no longer costs O(n^2).
_PARAM_RE = re.compile(r"(?<!\w)(?:(\w+)\s*=\s*['\"](.+?)['\"]|(\w+)\s*=\s*(\[.*\])|(\w+)\s*=\s*(\w+))")
MAX_CALL_CHARS = 20_000  # longer argument lists are not parsed (no API-Bank call comes near)

_TOKEN_TIME = {"time": "strict_datetime"}
_MEETING = {"meeting_topic": "words", "start_time": "strict_datetime", "end_time": "strict_datetime",
            "attendees": "list"}
_REMINDER = {"content": "words_lower", "time": "strict_datetime"}
_RULES = {
    "AddAgenda": {"content": "words", "time": "strict_datetime"},
    "ModifyAgenda": {"content": "words", "time": "strict_datetime"},
    # officially only `time` decides once both calls succeed; deletion succeeds on content OR time
    "DeleteAgenda": {"content": "ignore", "time": "strict_datetime", "location": "ignore"},
    "AddAlarm": _TOKEN_TIME, "DeleteAlarm": _TOKEN_TIME, "QueryAlarm": _TOKEN_TIME,
    "ModifyAlarm": {"from_time": "strict_datetime", "to_time": "strict_datetime"},
    "AddMeeting": _MEETING, "QueryMeeting": _MEETING, "ModifyMeeting": _MEETING, "DeleteMeeting": _MEETING,
    "AddReminder": _REMINDER, "ModifyReminder": _REMINDER, "DeleteReminder": _REMINDER, "QueryReminder": _REMINDER,
    "AppointmentRegistration": {"patient_name": "strip", "date": "date", "doctor_name": "strip"},
    "QueryRegistration": {"patient_name": "strip", "date": "date"},
    "ModifyRegistration": {"appointment_id": "strip", "new_appointment_date": "date",
                           "new_appointment_doctor": "strip"},
    "CancelRegistration": {"appointment_id": "strip"},
    "RecordHealthData": {"user_id": "upper", "time": "datetime", "health_data": "health"},
    "QueryHealthData": {"user_id": "upper", "start_time": "datetime", "end_time": "datetime"},
    "QueryHistoryToday": {"date": "month_day"},
    "QueryStock": {"stock_code": "upper", "date": "date"},
    "EmergencyKnowledge": {"symptom": "lower"}, "SymptomSearch": {"symptom": "lower"},
    "BookHotel": {"hotel_name": "strip", "check_in_time": "date", "check_out_time": "date", "room_count": "int",
                  "adult_count": "int", "child_count": "int"},
    "TimedSwitch": {"time": "strict_datetime", "on": "bool"}, "CancelTimedSwitch": {"time": "strict_datetime"},
    "ForgotPassword": {"verification_code": "int"},
    "PlayMusic": {"music_name": "lower"}, "QueryScene": {"name": "strip"}, "DeleteScene": {"name": "strip"},
    "ToolSearcher": {"keywords": "words_lower"},
    "Dictionary": {"keyword": "lower"}, "Wiki": {"keyword": "lower"}, "SearchEngine": {"keyword": "words_lower"},
    "Translate": {"src": "strip", "src_lang": "lower", "tgt_lang": "lower"},
    "DocumentQA": {"question": "words_lower"}, "Calculator": {"formula": "nospace"},
    "SendEmail": {"subject": "words_lower", "content": "words_lower"},
}
_OFFICIAL = {"AddAgenda", "AddAlarm", "AddMeeting", "AddReminder", "DeleteAgenda", "DeleteMeeting", "QueryMeeting",
             "ModifyReminder", "ModifyRegistration", "AppointmentRegistration", "QueryRegistration",
             "RecordHealthData", "QueryHistoryToday", "QueryStock", "EmergencyKnowledge", "GetUserToken",
             "OpenBankAccount"}
_APPROX = {"Dictionary", "Translate", "SearchEngine", "Wiki", "ToolSearcher", "DocumentQA", "Calculator"}


def rule_source(api_name: str) -> str:
    return "approx" if api_name in _APPROX else "official" if api_name in _OFFICIAL else "inferred"


# ---------------------------------------------------------------- parsing and rendering

def _call_match(text: str) -> tuple[int, str, str, int] | None:
    """What `_CALL_RE.search(text)` finds, as (start, name, arguments, end), in linear time: the leftmost `[Name(`
    whose line holds a later `)]`, the arguments running to the last `)]` of that line (`.*` is greedy and stops at
    a newline). The regex itself backtracks quadratically on text with many `[Name(` and no `)]`."""
    line_end = close = -1
    for m in _CALL_OPEN.finditer(text):
        if m.end() > line_end:  # a new line: find its end and its last ")]" once
            line_end = text.find("\n", m.end())
            line_end = len(text) if line_end < 0 else line_end
            close = text.rfind(")]", 0, line_end)
        if close >= m.end():
            return m.start(), m.group(1), text[m.end():close], close + 2
    return None


def extract_call(text: str) -> str | None:
    """The `[Name(...)]` span the official `get_api_call` keeps, or None."""
    m = _call_match(text)
    return text[m[0]:m[3]] if m else None


def parse_api_call(text: str) -> tuple[str, dict] | None:
    """(api_name, {param: str value}) as the official parser reads it; None when there is no `[Name(...)]`."""
    m = _call_match(text)
    if m is None:
        return None
    if len(m[2]) > MAX_CALL_CHARS:
        return m[1], {}
    params = {}
    for p in _PARAM_RE.finditer(m[2]):
        if p.group(1):
            params[p.group(1)] = p.group(2)
        elif p.group(3):
            params[p.group(3)] = p.group(4)
        else:
            params[p.group(5)] = p.group(6)
    return m[1], params


def render_call(api_name: str, params: dict) -> str:
    """`[Name(key='value', ...)]`; list values (text starting with "[") are written bare so that they parse."""
    parts = []
    for k, v in params.items():
        v = str(v)
        parts.append(f"{k}={v}" if v.startswith("[") and v.endswith("]") else f"{k}='{v}'")
    return f"[{api_name}({', '.join(parts)})]"


# ---------------------------------------------------------------- value rules

def _norm_date(value: str, fmt: str):
    value = value.strip()
    parts = value.split("-")
    if len(parts) == 3 and len(parts[0]) != 4:
        parts[0] = parts[0].zfill(4)
        value = "-".join(parts)
    try:
        return _dt.datetime.strptime(value, fmt).strftime(fmt)
    except ValueError:
        return None


def _norm_month_day(value: str):
    full = _norm_date(value, "%Y-%m-%d")
    if full is not None:
        return full[5:]
    try:
        return _dt.datetime.strptime(value.strip(), "%m-%d").strftime("%m-%d")
    except ValueError:
        return None


def _json_list(value: str):
    try:
        out = json.loads(value.replace("'", '"'))
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; 100,000 "[" is a RecursionError
        return None
    return out if isinstance(out, list) else None


def _health(value: str):
    items = _json_list(value)
    if items is None or not all(isinstance(i, dict) and "name" in i and "value" in i for i in items):
        return None
    return sorted(str({"name": str(i["name"]), "value": str(i["value"])}) for i in items)


def _int(v: str):
    try:
        return int(v)
    except ValueError:  # "²".isdigit() is True, int("²") raises
        return None


def _words_match(pred: str, gold: str, lower: bool) -> bool:
    a, b = (pred.lower(), gold.lower()) if lower else (pred, gold)
    a, b = set(a.split(" ")), set(b.split(" "))
    return len(a & b) / len(a | b) > 0.5


def _is_strict_datetime(v: str) -> bool:
    try:
        _dt.datetime.strptime(v, "%Y-%m-%d %H:%M:%S")
        return True
    except ValueError:
        return False


_NORMALISERS = {
    "exact": lambda v: v,
    "strip": str.strip,
    "upper": lambda v: v.upper().strip(),
    "lower": lambda v: v.strip().lower(),
    "nospace": lambda v: "".join(v.split()),
    "date": lambda v: _norm_date(v, "%Y-%m-%d"),
    "datetime": lambda v: _norm_date(v, "%Y-%m-%d %H:%M:%S"),
    "month_day": _norm_month_day,
    "list": _json_list,
    "health": _health,
    "int": lambda v: _int(v) if v.isdigit() else None,
    "bool": lambda v: v == "True",
}


def value_matches(rule: str, pred: str, gold: str) -> bool:
    if rule == "ignore":
        return True
    if rule in ("words", "words_lower"):
        return _words_match(pred, gold, rule == "words_lower")
    if rule == "strict_datetime":
        return pred == gold and _is_strict_datetime(pred)
    if rule not in _NORMALISERS:
        raise ValueError(f"unknown value rule {rule!r}; choose one of {sorted(_NORMALISERS)}")
    p, g = _NORMALISERS[rule](pred), _NORMALISERS[rule](gold)
    return p is not None and p == g


def check_call(pred: tuple[str, dict] | None, gold_name: str, gold_params: dict, api_desc: dict | None = None):
    """(correct, error_type) for a parsed call against the gold call."""
    if pred is None:
        return False, "no_call"
    name, params = pred
    if name != gold_name:
        return False, "wrong_api_name"
    rules = _RULES.get(gold_name, {})
    optional = {k for k, d in ((api_desc or {}).get("input_parameters") or {}).items()
                if str(d.get("description", "")).startswith("[Optional]")}
    for k in gold_params:
        if k not in params:
            return False, f"missing_param:{k}"
    for k in params:
        if k not in gold_params and k not in optional:
            return False, f"extra_param:{clip(k, 100)}"
    for k, g in gold_params.items():
        if not value_matches(rules.get(k, "exact"), params[k], g):
            return False, f"wrong_value:{k}"
    return True, None
