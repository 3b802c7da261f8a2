"""Train a small xLSTM LM (mLSTM + sLSTM blocks) on byte-level Python source, plot the loss against the unigram
baseline, save a checkpoint and print a sample. `python -m experiments.quickstart [train.steps=...]`."""
from __future__ import annotations

from pathlib import Path

import hydra
import matplotlib
import torch
from omegaconf import DictConfig, OmegaConf

from xlstm_core import save_pretrained, xLSTMLM, xLSTMLMConfig
from xlstm_core.text import ByteCorpus, bits_per_byte
from xlstm_core.tokenizer import ByteTokenizer
from xlstm_core.training import TrainConfig, train_lm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_losses(history: list[dict], unigram: float, path: Path) -> None:
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [h["train_loss"] for h in history], marker="o", label="train (EMA)")
    ax.plot(steps, [h["val_loss"] for h in history], marker="s", label="validation")
    ax.axhline(unigram, color="gray", linestyle="--", label=f"unigram baseline ({unigram:.2f})")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/byte)", title="xLSTM LM on Python stdlib bytes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.train.seed)
    model_kw = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg = xLSTMLMConfig.preset(model_kw.pop("preset"), **model_kw)
    model = xLSTMLM(model_cfg)
    corpus = ByteCorpus.python_stdlib(cfg.corpus_bytes)
    unigram = corpus.unigram_loss()
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters, blocks "
          f"{['s' if i in model_cfg.stack.slstm_at else 'm' for i in range(model_cfg.stack.num_blocks)]}; "
          f"corpus {sum(len(s) for s in corpus.splits.values())} bytes; unigram baseline {unigram:.3f} nats/byte")
    history = train_lm(model, corpus, TrainConfig(**cfg.train), out_dir, device=device, resume=cfg.resume)
    plot_losses(history, unigram, out_dir / "loss_curve.png")
    save_pretrained(model.cpu(), out_dir / "checkpoint")
    final = history[-1]["val_loss"]
    print(f"validation loss {final:.3f} nats/byte ({bits_per_byte(final):.2f} bits/byte) vs unigram {unigram:.3f}: "
          f"{100 * (1 - final / unigram):.0f}% below")
    model.eval()
    tokenizer = ByteTokenizer()
    prompt = tokenizer.encode(cfg.sample.prompt)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    new = model.generate(prompt, cfg.sample.max_new_tokens, temperature=cfg.sample.temperature,
                         top_k=cfg.sample.top_k, generator=generator)
    print("sample:\n" + tokenizer.decode(torch.cat([prompt, new[0]])))
    print(f"wrote {out_dir / 'loss_curve.png'}, {out_dir / 'metrics.csv'} and {out_dir / 'checkpoint'}")


if __name__ == "__main__":
    main()
