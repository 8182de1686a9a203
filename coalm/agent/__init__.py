"""The CoALM agent: data recipe, training and the base-vs-tuned scorecard (`python -m coalm.agent`)."""
