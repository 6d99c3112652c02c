"""The data layer: tasks, their tokenizer, and batches of token ids.

    catalog    each dataset's metric and reported metrics (what the config checks against)
    registry   the datasets, their splits and their one example format (`load_task`)
    embedded   the embedded restaurant task, generated deterministically
    tokenizer  the word-level tokenizer the embedded study builds from its training split
    batching   prompts and targets to padded id tensors, teacher-forced logits

Importing this package is cheap: `datasets` and the generators load only when a task is loaded.
"""
