"""Language modelling on local text: mLSTMexp vs mLSTMsig vs a Llama-style Transformer."""
