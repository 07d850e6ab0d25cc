"""A LightningModule tuned by tunelab through `TunelabCallback`: the model, data and config of
examples/own_loop (its conf/), trained by a Lightning Trainer. Needs `pip install -e ".[lightning]"`.
`python examples/lightning/train.py -m search=random hydra.sweeper.pruner.name=median`."""

import hydra
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tunelab import tracked_run  # also makes ${tunelab_conf:} known to the config
from tunelab.data.splits import make_splits
from tunelab.lightning import TunelabCallback


def load_data():
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return make_splits(x_tr, y_tr, x_te, y_te, name="digits", val_fraction=0.2, split_seed=0)


class Digits(pl.LightningModule):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(64, cfg.model.hidden), nn.ReLU(), nn.Linear(cfg.model.hidden, 10)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), batch_size=len(y))

    def configure_optimizers(self):
        opt = self.cfg.optimizer
        return torch.optim.AdamW(self.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


@hydra.main(config_path="../own_loop/conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    data = load_data()
    train = TensorDataset(data.x_train, data.y_train)
    with tracked_run(cfg, data=data) as run:  # seeds every RNG, opens (or continues) the record
        module = Digits(cfg)
        trainer = pl.Trainer(
            max_epochs=cfg.trainer.max_epochs,
            accelerator=run.device.type,
            callbacks=[TunelabCallback(run)],
            logger=False,
            enable_checkpointing=False,  # tunelab's store checkpoints and resumes
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(
            module,
            # shuffled by the run's generator: checkpointed with the run
            DataLoader(train, cfg.trainer.batch_size, shuffle=True, generator=run.generator),
            DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=len(data.y_val)),
        )
        run.load_best(module)  # the epoch objective.metric selected
        with torch.no_grad():
            module.eval()
            logits = module.net(data.x_test)
        test_acc = (logits.argmax(1) == data.y_test).float().mean().item()
        run.log_summary(
            {"test/loss": F.cross_entropy(logits, data.y_test).item(), "test/acc": test_acc}
        )
    return run.result


if __name__ == "__main__":
    main()
