"""CoALM: CoALM-IT training data and the benchmark evaluators (MultiWOZ, API-Bank, BFCL V3)."""
