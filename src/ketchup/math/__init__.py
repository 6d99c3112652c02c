"""The pure math of the study: functions of tensors and arrays only (no models, files or I/O).

    checks           argument checks shared by the tensor functions (shapes, masks, ids)
    returns          teacher Q-values, state values, one- and K-step rewards and returns
    policy_gradient  importance weights, baselines and the REINFORCE loss (LLMR, KETCHUP)
    divergences      token-level divergences (KL, JS, TVD, generalized JSD) and MiniLLM's reward
    objectives       each on-policy method's loss from logits over sequences, for the trainer
    variance         gradient moments over rollout sets (Theorem 1, measured)
    stats            bootstrap intervals and paired tests over examples and seeds

The stages call these; nothing here imports a stage, a model or the config.
"""
