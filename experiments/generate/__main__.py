"""`python -m experiments.generate checkpoint=PATH tokenizer=PATH/tokenizer.json prompt="..."`: stream a sample and
print decode throughput."""
from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from xlstm_core import stream, xLSTMLM, xLSTMLMConfig
from xlstm_core.checkpoint import load_model
from xlstm_core.cuda_graph import GraphedDecoder
from xlstm_core.tokenizer import ByteTokenizer, LocalTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, DTYPES[dtype]


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    device, dtype = pick(cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    tokenizer = ByteTokenizer() if cfg.tokenizer == "bytes" else LocalTokenizer(cfg.tokenizer)
    if Path(cfg.checkpoint).is_dir():
        model = load_model(cfg.checkpoint, device, dtype)
        print(f"loaded {cfg.checkpoint} ({model.num_parameters() / 1e6:.1f}M parameters)")
    else:
        print(f"no checkpoint at {cfg.checkpoint}: using a randomly initialised tiny model (run "
              "`python -m experiments.quickstart` first for a trained one)")
        model = xLSTMLM(xLSTMLMConfig.preset("tiny", vocab_size=tokenizer.vocab_size)).to(device, dtype)
    if model.cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model only {model.cfg.vocab_size}")
    model.eval()
    eos = None if cfg.eos_token is None else tokenizer.token_id(cfg.eos_token)
    prompt = tokenizer.encode(cfg.prompt).to(device).unsqueeze(0)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    if cfg.cuda_graph and device.type == "cuda":
        tokens = GraphedDecoder(model, eos_token_id=eos, **sampling).stream(prompt, cfg.max_new_tokens)
    else:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        tokens = stream(model, prompt, cfg.max_new_tokens, eos_token_id=eos, generator=generator, **sampling)
    print(cfg.prompt, end="", flush=True)
    produced, shown, start, first_at = [], 0, time.perf_counter(), None
    for token in tokens:
        produced.append(int(token[0]))
        first_at = first_at or time.perf_counter()
        text = tokenizer.decode(produced)
        if not text.endswith("\ufffd"):  # hold back a possibly incomplete multi-byte character
            print(text[shown:], end="", flush=True)
            shown = len(text)
        if eos is not None and produced[-1] == eos:
            break
    print(tokenizer.decode(produced)[shown:], end="")
    elapsed = time.perf_counter() - first_at if first_at else 0.0
    rate = (len(produced) - 1) / elapsed if elapsed > 0 and len(produced) > 1 else float("nan")
    print(f"\n\n{len(produced)} tokens; prefill + first token {first_at - start:.3f}s; decode {rate:.1f} tokens/s "
          f"on {device} ({dtype})")


if __name__ == "__main__":
    main()
