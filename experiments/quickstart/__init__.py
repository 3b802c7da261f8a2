"""Quickstart: train a small mixed mLSTM/sLSTM language model on the Python standard library's sources."""
