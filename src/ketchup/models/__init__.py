"""The models layer: building, loading and saving models, and where they run.

architectures  the model families and their from-scratch configurations (read by the config)
loading        build, load and save a model or tokenizer; the device of this process
hub            local copies of hub models and datasets, offline runs
precision      the dtype a model runs in, and mixed precision for training
parallel       the processes of a job and the data-parallel engines over them
"""
