"""Hydra entry points: `python -m experiments.<name>`; each has a tiny CPU default and a full config."""
