"""The train layer: the training loop and what runs inside it.

loop        the trainer: updates, evaluation, checkpoints and resume
generation  batched sampling and greedy decoding with the KV cache
signals     graceful stop on SIGTERM/SIGINT (preemption) and divergence
progress    progress lines on long work
loggers     the training log and its TensorBoard / W&B mirrors
"""
