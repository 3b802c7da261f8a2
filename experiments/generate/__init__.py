"""Generate text from a local checkpoint (ours or the published xLSTM-7B layout) and report tokens/s."""
