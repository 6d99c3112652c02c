"""The ops layer: the workflow's tooling around the stages.

plan          what a config will run: jobs, GPU hours, memory per GPU
bench         timings of the update, generation and the study's jobs
bench_gpu     the GPU benchmark's runs
gpu_slots     one job's share of the machine's GPUs
workflow_env  the environment the workflow's jobs run in
"""
