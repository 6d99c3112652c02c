"""Workflow stages: each takes the parsed CLI arguments of one verb and writes its outputs."""
