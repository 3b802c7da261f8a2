"""Hydra entry point for the RL experiments (`python -m experiments.rl`)."""
