"""MultiWOZ Inform / Success / BLEU as mwzeval (Tomiinek/MultiWOZ_Evaluation) computes them, from its documented
rules: placeholder normalisation of responses, the venue database look-up, goals, active domains, the dialogue
success rule, and corpus BLEU through sacrebleu (`corpus_bleu(hyps, [refs]).score`, as `get_bleu`).

Not reproduced: mwzeval's Moses tokenise/detokenise round trip of responses (sacremoses is not a dependency; it only
moves spaces around punctuation before sacrebleu tokenises again), its goals.json (goals are rebuilt from each
dialogue's raw goal) and its MultiWOZ 2.2 references and gold states (2.1 ones are used, see multiwoz.py).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import ClassVar

from coalm.eval.base import EvalError
from coalm.eval.multiwoz.norm import DONTCARE, mwz_slot, mwz_value, norm_slot, norm_value, partial_ratio, time_minutes

# mwzeval's placeholder names: unified slot -> the delexicalised spellings it maps there (anything else -> "").
_SLOT_NAMES = {
    "ADDRESS": "address attraction_address hospital_address hotel_address police_address restaurant_address "
               "value_address",
    "AREA": "area value_area attraction_area restaurant_area hotel_area",
    "TIME": "booktime value_time time duration value_duration train_duration arriveby taxi_arriveby value_arrive "
            "arrive_by train_arriveby leaveat value_leave leave_at train_leaveat train_leave train_arrive "
            "taxi_leaveat",
    "DAY": "day value_day bookday train_day",
    "PLACE": "destination value_destination departure value_departure value_place train_departure "
             "train_destination taxi_destination taxi_departure",
    "FOOD": "food value_food restaurant_food",
    "NAME": "name attraction_name hospital_name hotel_name police_name restaurant_name value_name",
    "PHONE": "phone attraction_phone hospital_phone hotel_phone police_phone restaurant_phone taxi_phone value_phone",
    "POST": "postcode attraction_postcode hospital_postcode hotel_postcode restaurant_postcode value_postcode "
            "police_postcode",
    "PRICE": "price value_price entrancefee entrance_fee train_price attraction_entrancefee pricerange "
             "value_pricerange price_range restaurant_pricerange hotel_pricerange attraction_pricerange "
             "attraction_price",
    "REFERENCE": "ref attraction_reference hotel_reference restaurant_reference train_reference value_reference "
                 "reference",
    "COUNT": "stars value_stars hotel_stars bookstay value_stay stay bookpeople value_people people choice "
             "value_choice value_count attraction_choice hotel_choice restaurant_choice train_choice",
    "TYPE": "type taxi_type taxi_car value_type value_car car restaurant_type hotel_type attraction_type",
    "TRAINID": "trainid train_id value_id id train train_trainid",
    "INTERNET": "internet hotel_internet", "PARKING": "parking hotel_parking",
    "ID": "hospital_id attraction_id restaurant_id",
    "DEPARTMENT": "value_department department hospital_department", "OPEN": "openhours",
}
# Written with "_" for spaces above ("arrive by", "entrance fee", ...): the table is data, one name per word.
_SLOT = {alias.replace("_", " ") if alias in ("arrive_by", "leave_at", "entrance_fee", "price_range") else alias: k
         for k, names in _SLOT_NAMES.items() for alias in names.split()}
_PLACEHOLDER = re.compile(r"\[([\w\s\d]+)\](es|s|-s|-es|)")
MAX_RESPONSE = 20_000  # characters of a response scored


def normalize_response(text) -> str:
    """mwzeval's response normalisation (without the Moses round trip): lowercase, placeholders -> NAME, PHONE, ...
    (plural suffixes dropped, unknown placeholders removed), then "-s" and "-ly" removed."""
    text = (text if isinstance(text, str) else "")[:MAX_RESPONSE].lower()
    text = _PLACEHOLDER.sub(lambda m: _SLOT.get(m.group(1).lower(), ""), text)
    return text.replace("-s", "").replace("-ly", "")


def bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


class VenueDatabase:
    """mwzeval's `MultiWOZVenueDatabase` over `mwzeval_database/{restaurant,attraction,hotel,train}_db.json`."""

    IGNORE: ClassVar[dict] = {"attraction": {"location", "openhours"}, "hotel": {"location", "price", "takesbookings"},
                              "restaurant": {"location", "introduction", "signature"}}
    FUZZY: ClassVar[dict] = {"hotel": {"name"}, "attraction": {"name"}, "restaurant": {"name", "food"},
                             "train": {"departure", "destination"}}

    def __init__(self, folder: Path):
        self.rows, self.keys = {}, {}
        for dom in ("restaurant", "attraction", "hotel", "train"):
            path = Path(folder) / f"{dom}_db.json"
            if not path.is_file():
                raise EvalError(f"missing venue database {path} (needed for Inform/Success)")
            self.rows[dom] = [{self._col(k): v for k, v in item.items() if k not in self.IGNORE.get(dom, ())}
                              for item in json.loads(path.read_text(encoding="utf-8"))]
            self.keys[dom] = list(self.rows[dom][0])

    @staticmethod
    def _col(name: str) -> str:
        return name if name == "id" else mwz_slot(name)

    def query(self, domain: str, constraints: dict) -> list[str]:
        """Ids (train ids) of the venues matching a state or goal's constraints, in database order."""
        if domain not in self.rows or not isinstance(constraints, dict):
            return []
        cons = {mwz_slot(k): v for k, v in constraints.items()}
        return list(self._query(domain, tuple(sorted((k, str(v)) for k, v in cons.items()))))

    @functools.lru_cache(maxsize=1 << 14)  # noqa: B019 - one database per evaluation, states repeat across turns
    def _query(self, domain: str, items: tuple) -> tuple:
        cons = dict(items)
        query = {}
        for key in self.keys[domain]:
            if key in cons and cons[key] not in DONTCARE:
                value = mwz_value(key, cons[key])
                query[key] = time_minutes(value) if key in ("arrive", "leave") else value
        out = []
        for item in self.rows[domain]:
            for k, v in query.items():
                if item[k] == "?":
                    continue
                if k == "arrive":
                    ok = time_minutes(item[k]) <= v
                elif k == "leave":
                    ok = time_minutes(item[k]) >= v
                elif k in self.FUZZY.get(domain, ()):
                    ok = partial_ratio(item[k], v) >= 90
                else:
                    ok = item[k] == v
                if not ok:
                    break
            else:
                out.append(item["trainid"] if domain == "train" else item["id"])
        return tuple(out)


@functools.lru_cache(maxsize=4)
def load_database(folder: str) -> VenueDatabase:
    """One database per folder and process: scoring a dialogue at a time must not re-read 60,000 venue rows."""
    return VenueDatabase(Path(folder))


def parse_goal(raw: dict) -> dict:
    """mwzeval-style goal {domain: {"informable", "requestable"}} from a MultiWOZ raw goal."""
    goal = {}
    for dom in ("restaurant", "hotel", "attraction", "train", "taxi", "police", "hospital"):
        g = raw.get(dom)
        if not isinstance(g, dict) or "info" not in g:
            continue
        reqt = set(g.get("reqt", []))
        if dom == "train":
            req = {"TRAINID"} if "trainID" in reqt else set()
        else:
            names = {"phone": "PHONE", "address": "ADDRESS", "postcode": "POST", "reference": "REFERENCE"}
            req = {names[r] for r in reqt if r in names}
        if "book" in g:
            req.add("REFERENCE")
        informable = {norm_slot(k): norm_value(v) for k, v in g["info"].items()}
        goal[dom] = {"informable": informable, "requestable": sorted(req)}
    return goal


def estimate_domains(states: list[dict]) -> list[list[str]]:
    """mwzeval's active-domain estimate: the domain whose state changed (the previous one when several did)."""
    out, current, old, old_changed = [], None, {}, []
    for state in states:
        changed = [d for d in state if set(state.get(d, {}).items()) - set(old.get(d, {}).items())]
        if not changed:
            if current is None:
                out.append([])
                continue
            if len(old_changed) > 1:
                rest = [d for d in old_changed if d in state and d != current]
                if rest:
                    current = rest[0]
        elif current not in changed:
            current = max(changed, key=lambda d: len(state[d]))
        old, old_changed = state, changed
        out.append([current])
    return out


def dialog_inform_success(goal, booked, responses, states, domains, db) -> tuple[bool, bool]:
    """mwzeval's `get_dialog_success` for one dialogue -> (inform, success)."""
    offered = {d: [] for d in goal}
    provided = {d: set() for d in goal}
    for utt, state, booked_now, active in zip(responses, states, booked, domains, strict=True):
        for dom in goal:
            if dom not in active:
                continue
            names_venue = "NAME" in utt and dom in ("restaurant", "hotel", "attraction")
            if names_venue or ("TRAINID" in utt and dom == "train"):
                venues = db.query(dom, state[dom]) if dom in state else []
                if not offered[dom] or any(v not in venues for v in offered[dom]):
                    offered[dom] = venues
            for slot in ("PHONE", "ADDRESS", "POST", "REFERENCE", "TRAINID"):
                if slot in utt and (slot != "REFERENCE" or dom in booked_now):
                    provided[dom].add(slot)
    inform = True
    for dom, g in goal.items():
        auto = ("name" in g["informable"] or dom in ("taxi", "police", "hospital")
                or (dom == "train" and not offered[dom] and "TRAINID" not in g["requestable"]))
        if auto:
            continue
        if dom not in ("restaurant", "hotel", "attraction", "train") or not offered[dom] \
                or not set(offered[dom]) <= set(db.query(dom, g["informable"])):
            inform = False
    success = inform and all(set(g["requestable"]) <= provided[d] for d, g in goal.items())
    return inform, success
