"""The evaluate layer: scores of generated outputs.

metrics  the validation score a trainer selects checkpoints by
scoring  BLEU, ROUGE, accuracy, slot errors of a run's outputs
judge    LLM-as-judge: prompts, parsing, cache, client, protocols
"""
