"""Hydra entry point for the few-shot experiments (`python -m experiments.fewshot benchmark=...`)."""
