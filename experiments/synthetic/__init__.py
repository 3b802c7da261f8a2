"""Synthetic tasks of the xLSTM paper: formal languages (state tracking) and multi-query associative recall."""
