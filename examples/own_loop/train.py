"""A training loop of your own, recorded, checkpointed, resumed and pruned by tunelab: a small MLP
on scikit-learn's digits (offline), plain PyTorch. Run from any directory:
`python examples/own_loop/train.py -m search=random hydra.sweeper.pruner.name=median`."""

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tunelab import tracked_run  # also makes ${tunelab_conf:} known to conf/train.yaml
from tunelab.data.splits import make_splits


def load_data():
    """Digits split train / test, then validation carved off train (make_splits: digest too)."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return make_splits(x_tr, y_tr, x_te, y_te, name="digits", val_fraction=0.2, split_seed=0)


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    data = load_data()
    with tracked_run(cfg, data=data) as run:  # seeds every RNG, opens (or continues) the record
        model = make_model(cfg.model.hidden).to(run.device)
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
        )
        run.resume(model, opt)  # after a crash: the last completed epoch, RNG states included
        train = DataLoader(  # shuffled by the run's generator: checkpointed with the run
            TensorDataset(data.x_train, data.y_train),
            batch_size=cfg.trainer.batch_size,
            shuffle=True,
            generator=run.generator,
        )
        x_val, y_val = data.x_val.to(run.device), data.y_val.to(run.device)
        for epoch in run.epochs():  # 1 .. trainer.max_epochs, from where a resume left off
            model.train()
            total = 0.0
            for x, y in train:
                x, y = x.to(run.device), y.to(run.device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(y)
            val_loss, val_acc = evaluate(model, x_val, y_val)
            metrics = {
                "train/loss": total / len(train.dataset),
                "val/loss": val_loss,
                "val/acc": val_acc,
            }
            run.log_epoch(epoch, metrics)  # record, checkpoint, report to the pruner
        run.load_best(model)  # the epoch objective.metric selected
        test_loss, test_acc = evaluate(
            model, data.x_test.to(run.device), data.y_test.to(run.device)
        )
        run.log_summary({"test/loss": test_loss, "test/acc": test_acc})
    return run.result  # what a sweep reads: the selected epoch's metrics


if __name__ == "__main__":
    main()
