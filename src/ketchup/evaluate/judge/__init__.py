"""LLM-as-judge: pointwise 1-10 ratings and position-balanced pairwise comparisons of outputs.

Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, ...) through the official `openai` client.
Modules, one concept each:

    prompts    versioned templates (templates/*.txt), task rubrics, the token estimate
    parsing    reading a score or a verdict out of an answer; unparsed answers are kept, not scored
    cache      the SQLite cache of raw answers, keyed by judge, template version, decoding, prompt
    client     the API key from the environment, retries with backoff, the total-time ceiling
    protocols  the requests of each protocol, combining the two pairwise orders, the summaries

The `ketchup judge` verb and `run_judge`, which write the files, are ketchup.stages.judge.
"""
