"""API-Bank level-1 and level-2 evaluation, scored offline (see `bench` for the construction and the rules).

    python -m coalm.eval --bench api-bank --responses preds.jsonl [--apibank-levels 1 --apibank-kinds api_call]
    python -m coalm.eval --bench api-bank --model smollm2-135m --prompt-style coalm --limit 40

Files: `bench` (samples, loading, scoring, result files, options, the `Task`), `calls` (call parsing and the official
per-API value rules), `coalm_style` (the CoALM-IT prompts and answers).
"""

from coalm.eval.api_bank.bench import (  # noqa: F401 - the benchmark's public names
    API_CALL_PROMPT,
    KINDS,
    LEVEL_DIRS,
    MAX_CALL_CHARS,
    MAX_CALL_METRIC_CHARS,
    MAX_METRIC_CHARS,
    RESPONSE_PROMPT,
    RESPONSES_SUFFIX,
    TASK,
    ApiBankTask,
    Options,
    check_call,
    evaluate,
    extract_call,
    load_examples,
    official_samples,
    parse_api_call,
    read_responses,
    render_call,
    render_history_item,
    responses_from_texts,
    rule_source,
    test_queries,
    value_matches,
    write_responses,
)
