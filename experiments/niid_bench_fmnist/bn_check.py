"""Does FedAvg's averaging of BatchNorm statistics hold the 2conv back on non-IID data?

Each client's BatchNorm running statistics follow its own label mix; FedAvg averages them.
This evaluates a run's final global model (a) as aggregated and (b) with only the BatchNorm
running statistics recomputed over all 60,000 training images (weights unchanged). A large
gap would mean the averaged statistics, not the weights, cost accuracy.

    python experiments/niid_bench_fmnist/bn_check.py results/sweeps/niid_bench_fmnist/dir0.5/<job> ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from fedconv.learning import task
from fedconv.learning.training import evaluate, folded_for_inference
from fedconv.runs import checkpoint, run_dir


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    if (run / run_dir.WEIGHTS).exists():
        return run_dir.load_weights(run / run_dir.WEIGHTS)
    return checkpoint.load(run / run_dir.CHECKPOINT).weights  # an unfinished run: its last round


def recompute_batchnorm_statistics(model: torch.nn.Module, images, normalizer, batch: int = 1000) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the pass
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(normalizer(images[start : start + batch]))


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        ds = task.dataset(cfg)
        norm = task.normalizer(cfg, ds, train=False)
        model = task.initial_model(cfg, ds)
        task.load_global(model, final_weights(run))
        aggregated = evaluate(folded_for_inference(model), ds.test_x, ds.test_y, norm).accuracy
        recompute_batchnorm_statistics(model, ds.train_x, norm)
        pooled = evaluate(folded_for_inference(model), ds.test_x, ds.test_y, norm).accuracy
        print(f"{run}: {cfg['model']['name']}, test accuracy {100 * aggregated:.2f} % as aggregated, "
              f"{100 * pooled:.2f} % with BatchNorm statistics of all training images")


if __name__ == "__main__":
    main(sys.argv[1:])
