"""coalm-engine: model, weights, tokenizer, LoRA/QLoRA, tensor parallelism, training and generation."""
