"""MultiWOZ evaluation: dialogue state tracking (JGA, slot F1) and responses (Inform, Success, BLEU).

    python -m coalm.eval --bench multiwoz --responses preds.json [--multiwoz-task response]
    python -m coalm.eval --bench multiwoz --model smollm2-135m --prompt-style coalm --limit 40

Files: `bench` (loading, state comparison, scoring, result files, options, the `Task`; its docstring states the
rules), `norm` (mwzeval's normalisation), `success` (Inform/Success/BLEU), `coalm_style` (the CoALM-IT DST format).
"""

from coalm.eval.multiwoz.bench import (  # noqa: F401 - the benchmark's public names
    DEFAULT_FILE,
    EMPTY_VALUES,
    FUZZY_STATE,
    MAX_STATE_TEXT,
    ONTOLOGY,
    RESPONSES_SUFFIX,
    TASK,
    TASKS,
    MultiwozTask,
    Options,
    VenueDatabase,
    bleu,
    compare_states,
    delexicalize,
    dialog_inform_success,
    dialogue_key,
    estimate_domains,
    evaluate,
    gold_state,
    load_database,
    load_examples,
    mwz_state,
    norm_slot,
    norm_value,
    normalize_response,
    normalize_state,
    parse_goal,
    parse_state_text,
    partial_ratio,
    read_responses,
    responses_from_texts,
    test_queries,
    write_responses,
)
