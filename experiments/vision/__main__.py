"""`python -m experiments.vision [scale=gpu|imagenet] [key=value ...]`

- default: build the digits ImageFolder, train the sized-down ViL and DeiT (same recipe, equal parameters) for each
  seed and print both accuracies (`mode=compare`);
- `model=<timm name> [img_size=192]`: print its parameters and FLOPs at its own resolution (224 for the *_224
  models) or at img_size (`mode=model`);
- `mode=train model=<timm name> data.root=<folder>`: train one model; `torchrun --nproc_per_node=N -m
  experiments.vision ...` runs it with DDP (`train.compile=true` runs the model under torch.compile,
  `train.compile_mode=reduce-overhead` with CUDA graphs);
- `mode=throughput model=<timm name>`: training images/s on synthetic batches (no data loading), per process and in
  total; `torchrun --nproc_per_node=N -m experiments.vision mode=throughput ...` shows how DDP scales.
"""
import logging
import os

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vision.compare import compare, markdown_table, summarize
from vision.complexity import describe
from vision.distributed import shutdown_distributed
from vision.embedded import build_digits_folder
from vision.throughput import training_throughput
from vision.train import TrainConfig, train

log = logging.getLogger(__name__)


def _train_config(cfg: DictConfig) -> TrainConfig:
    raw = OmegaConf.to_container(cfg, resolve=True)
    data = dict(raw["data"])
    if not data["root"]:
        data["root"] = build_digits_folder(raw["embedded"]["root"], size=raw["embedded"]["size"])
    return TrainConfig(data=data, **raw["train"])


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    finally:
        shutdown_distributed()


def run(cfg: DictConfig) -> None:
    """The mode's work (see the module docstring); torchrun's process group, if any, is left by main."""
    torch.set_num_threads(cfg.threads)
    mode = cfg.mode if cfg.mode != "auto" else ("model" if cfg.model else "compare")
    if mode == "model":
        if not cfg.model:
            raise ValueError("mode=model needs model=<timm name>, e.g. model=vil_tiny_patch16_224")
        info = describe(cfg.model, img_size=cfg.img_size, num_classes=cfg.num_classes)
        print(f"{info['model']} @ {info['img_size']}px: {info['params']:,} parameters, {info['gflops']:.3f} GFLOPs "
              f"({info['gflops'] / 2:.3f} GMACs) per image")
        return
    if mode == "throughput":
        if not cfg.model:
            raise ValueError("mode=throughput needs model=<timm name>, e.g. model=vil_tiny_patch16_224")
        result = training_throughput(cfg.model, OmegaConf.to_container(cfg.model_kwargs, resolve=True),
                                     **OmegaConf.to_container(cfg.throughput, resolve=True))
        if int(os.environ.get("RANK", "0")) == 0:
            mode = result["compile_mode"] or "default"
            print(f"{cfg.model} @ {result['img_size']}px, batch {result['batch_per_process']} per process, "
                  f"{result['world']} process(es), compile={result['compile']} ({mode}): "
                  f"{result['img_per_s_total']:.0f} img/s in total, {result['img_per_s_per_process']:.0f} per process")
        return
    base = _train_config(cfg)
    if mode == "train":
        if not cfg.model:
            raise ValueError("mode=train needs model=<timm name>")
        base.model, base.model_kwargs = cfg.model, OmegaConf.to_container(cfg.model_kwargs, resolve=True)
        base.out_dir = os.path.join(cfg.output_dir, cfg.model)
        result = train(base)
        if int(os.environ.get("RANK", "0")) == 0:
            final = result["final"]
            print(f"{cfg.model}: val top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  -> {base.out_dir}")
        return
    if mode != "compare":
        raise ValueError(f"mode must be auto, model, train, throughput or compare, got {mode!r}")
    contenders = OmegaConf.to_container(cfg.contenders, resolve=True)
    rows = compare(base, contenders, list(cfg.seeds), cfg.output_dir)
    print(markdown_table(summarize(rows)))
    for s in summarize(rows):
        print(f"{s['model']}: val top-1 {s['top1_mean']:.2f}% (± {s['top1_std']:.2f}, {s['seeds']} seeds, "
              f"{s['params']:,} parameters)")
    log.info("wrote %s", os.path.abspath(cfg.output_dir))


if __name__ == "__main__":
    main()
