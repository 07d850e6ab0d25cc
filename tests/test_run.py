"""End-to-end runs: what MLflow records, determinism, the overfit-a-tiny-subset sanity check."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
import torch
from conftest import EPOCH_METRICS, FAST, compose_cfg, mlflow_runs
from mlflow import MlflowClient

from tunelab.run.api import run
from tunelab.run.context import RunContext
from tunelab.tracking import NullTracker


def test_a_short_mnist1d_run_is_fully_recorded(in_tmp):
    cfg = compose_cfg("trainer.max_epochs=2", "model.width=16", "model.depth=2", "seed=3")
    summary = run(cfg).metrics
    client = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    (r,) = mlflow_runs(in_tmp)
    assert r.info.status == "FINISHED"
    # params: the flattened resolved config
    assert r.data.params["optimizer.lr"] == str(cfg.optimizer.lr)
    assert r.data.params["scheduler.name"] == cfg.scheduler.name
    assert r.data.params["model.width"] == "16"
    # tags: lineage
    for tag in (
        "git_sha",
        "git_dirty",
        "overrides",
        "seed",
        "device",
        "version.torch",
        "version.mlflow",
        "version.optuna",
        "data_digest",
        "hostname",
    ):
        assert tag in r.data.tags, tag
    assert r.data.tags["seed"] == "3"
    # per-epoch metrics and the final summary
    for key in EPOCH_METRICS:
        assert len(client.get_metric_history(r.info.run_id, key)) == 2, key
    assert r.data.metrics["test/acc"] == pytest.approx(summary["test/acc"])
    assert r.data.metrics["best/val/acc"] == pytest.approx(summary["val/acc"])
    # the dataset input with its digest
    (ds,) = r.inputs.dataset_inputs
    assert ds.dataset.name == "mnist1d" and summary and ds.dataset.digest
    # artifacts
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {
        "config.yaml",
        "overrides.yaml",
        "history.json",
        "checkpoints",
    } <= names
    # the logged model loads back and reproduces the logged validation accuracy
    import os

    from tunelab import build
    from tunelab.tracking.mlflow_tracker import fluent_store

    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model left no global behind
    with fluent_store(f"sqlite:///{in_tmp}/mlflow.db"):
        model = mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/model")  # a pt2 graph
    assert r.data.tags["model_format"] == "pt2"
    splits = build.build_data(cfg.data)
    with torch.no_grad():
        acc = (model(splits.x_val).argmax(1) == splits.y_val).float().mean().item()
    assert acc == pytest.approx(summary["val/acc"], abs=1e-6)


def test_same_seed_same_metrics_different_seed_different(in_tmp):
    a = run(compose_cfg(*FAST, "seed=1", "trainer.resume=never"), tracker=NullTracker()).metrics
    b = run(compose_cfg(*FAST, "seed=1", "trainer.resume=never"), tracker=NullTracker()).metrics
    c = run(compose_cfg(*FAST, "seed=2", "trainer.resume=never"), tracker=NullTracker()).metrics

    def quality(m):
        return {k: v for k, v in m.items() if not k.startswith("perf/")}

    assert quality(a) == quality(b)
    assert a["train/loss"] != c["train/loss"]


def test_overfit_a_tiny_subset(in_tmp):
    """Seed 003: with regularisation off the default model must drive the loss on 32 examples to ~0."""
    tracker = NullTracker()
    cfg = compose_cfg(
        "data.train_subset=32",
        "trainer.max_epochs=60",
        "trainer.batch_size=32",
        "optimizer.weight_decay=0.0",
        "model.dropout=0.0",
        "trainer.label_smoothing=0.0",
        "scheduler=constant",
    )
    summary = run(cfg, tracker=tracker).metrics
    assert summary["train/loss"] < 0.05


def test_divergence_is_recorded_as_failed(in_tmp):
    from tunelab.run.loop import DivergedError

    cfg = compose_cfg(*FAST, "optimizer=sgd", "optimizer.lr=1.0e6", "trainer.max_epochs=5")
    with pytest.raises(DivergedError):
        run(cfg)
    (r,) = mlflow_runs(in_tmp)
    assert r.info.status == "FAILED"
    assert r.data.tags["failure_reason"] == "nonfinite_loss"
    assert not math.isnan(float(r.data.tags["diverged_at_epoch"]))


def test_reporter_sees_every_epoch_and_can_stop_the_run(in_tmp):
    seen = []

    class Stop(Exception):
        pass

    def reporter(epoch, value):
        seen.append((epoch, value))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        cfg = compose_cfg(*FAST, "trainer.max_epochs=4")
        run(cfg, RunContext(reporter=reporter), tracker=NullTracker())
    assert [e for e, _ in seen] == [1, 2]  # epochs count from 1
    assert all(0.0 <= v <= 1.0 for _, v in seen)
    assert np.isfinite([v for _, v in seen]).all()


def test_metrics_are_sent_in_batches_and_nothing_pending_is_lost_at_the_end(workdir):
    """Per-epoch metrics wait for the batch interval; flush and end send whatever is pending."""
    from tunelab.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    tracker = MlflowTracker(uri, "tunelab", log_model=False, metrics_every_s=3600)
    run_id = tracker.start("batched", tags={})
    for epoch in range(3):
        tracker.log_metrics({"train/loss": 1.0 / (epoch + 1)}, step=epoch)
    tracker.writer.flush()  # everything queued so far has landed: the metrics are still pending
    assert client.get_metric_history(run_id, "train/loss") == []
    tracker.flush()
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    tracker.log_metrics({"train/loss": 0.1}, step=3)
    tracker.end("FINISHED")
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2, 3]

    eager = MlflowTracker(uri, "tunelab", log_model=False, metrics_every_s=0)
    eager_id = eager.start("eager", tags={})
    eager.log_metrics({"val/acc": 0.5}, step=0)
    eager.writer.flush()
    assert len(client.get_metric_history(eager_id, "val/acc")) == 1  # sent with its epoch
    eager.end("FINISHED")


def test_grad_norm_is_the_total_norm_before_clipping():
    from tunelab.run.loop import grad_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    model(torch.randn(4, 5)).pow(2).sum().backward()
    params = list(model.parameters())
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert torch.allclose(grad_norm(params, math.inf), expected)
    assert torch.allclose(grad_norm(params, 0.5), expected)  # reports the norm before clipping
    clipped = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert clipped <= 0.5 + 1e-6 < expected
    assert grad_norm([torch.nn.Parameter(torch.ones(2))], math.inf) == 0  # no gradients yet
    mixed = [
        torch.nn.Parameter(torch.ones(3)),
        torch.nn.Parameter(torch.ones(4, dtype=torch.float64)),
    ]
    for p in mixed:
        p.grad = torch.full_like(p, 2.0)
    assert math.isclose(float(grad_norm(mixed, math.inf)), math.sqrt(7 * 4.0), rel_tol=1e-6)


def test_stacked_replicas_grad_norm_is_each_replicas_own_and_clips_each():
    """The replica group's gradient norm (K replicas stacked [K, ...]) is, row by row, what one
    model's grad_norm measures and clips."""
    from tunelab.run.loop import grad_norm

    torch.manual_seed(1)
    grads = [torch.randn(3, 7, 5), torch.randn(3, 7)]  # K=3 replicas of a Linear(5, 7)
    for clip in (math.inf, 0.5):
        stacked = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        norms = grad_norm(stacked, clip, stacked=True)
        assert norms.shape == (3,)
        for k in range(3):
            one = [torch.nn.Parameter(torch.zeros_like(g[k])) for g in grads]
            for p, g in zip(one, grads, strict=True):
                p.grad = g[k].clone()
            assert torch.allclose(norms[k], grad_norm(one, clip))
            for p, q in zip(stacked, one, strict=True):
                assert torch.allclose(p.grad[k], q.grad, atol=1e-7)  # clipped alike


def test_a_pruned_run_names_the_same_epoch_in_its_message_and_its_tag(in_tmp):
    from tunelab.tuning.pruning import TrialPruned

    def reporter(epoch, value):
        if epoch == 2:
            raise TrialPruned(f"pruned at epoch {epoch} (value {value:.6g})")

    tracker = NullTracker()
    with pytest.raises(TrialPruned, match="pruned at epoch 2 "):
        run(
            compose_cfg(*FAST, "trainer.max_epochs=4"),
            RunContext(reporter=reporter),
            tracker=tracker,
        )
    tags = next(
        args[0] for name, args in tracker.calls if name == "set_tags" and "pruned" in args[0]
    )
    assert tags == {"pruned": "true", "pruned_at_epoch": "2"}


def test_system_metrics_on_request(in_tmp):
    """tracking.system_metrics=true: MLflow samples CPU and memory into the run while it trains
    (and GPU use on CUDA); off by default, and a run without it has none."""
    on = run(compose_cfg(*FAST, "trainer.max_epochs=6", "data.num_samples=2000",
                         "tracking.system_metrics=true", "tracking.system_metrics_every_s=0.2"))  # fmt: skip
    off = run(compose_cfg(*FAST, "seed=3"))
    client = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    sampled = client.get_run(on.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in sampled, sorted(sampled)
    assert "system/system_memory_usage_megabytes" in sampled
    assert not [k for k in client.get_run(off.run_id).data.metrics if k.startswith("system/")]
    assert client.get_run(on.run_id).info.status == "FINISHED"


def test_a_finished_config_run_again_says_so_and_trains_a_new_run(in_tmp, caplog):
    cfg = compose_cfg(*FAST, "trainer.max_epochs=1")
    first = run(cfg, RunContext(log_model=False))
    with caplog.at_level("INFO", logger="tunelab.run.store"):
        second = run(cfg, RunContext(log_model=False))
    assert second.run_id != first.run_id
    note = [r.getMessage() for r in caplog.records if "already ran to its end" in r.getMessage()]
    assert note and first.run_id in note[0] and "training a new run" in note[0]


def test_every_shipped_optimizer_has_a_row_of_facts_that_replicas_and_diagnosis_follow():
    """conf/optimizer/<name>.yaml's class must have a row in config/groups.py's OPTIMIZERS (a
    missing one fails here, not silently); replica rules and the curve diagnosis read it."""
    from conftest import CONF
    from omegaconf import OmegaConf

    from tunelab.config.groups import OPTIMIZER, OPTIMIZERS
    from tunelab.diagnostics.curves import ADAPTIVE_RECOMMENDATIONS, recommendation
    from tunelab.run.replica_rules import config_reason

    files = sorted((CONF / "optimizer").glob("*.yaml"))
    assert len(files) >= 11
    for path in files:
        node = OmegaConf.load(path)
        facts = OPTIMIZERS.get(node._target_)
        assert facts is not None, f"{path.name}: {node._target_} has no row in OPTIMIZERS"
        assert OPTIMIZER[node._target_] is facts.settings
        adaptive = recommendation("diverged", node.name) == ADAPTIVE_RECOMMENDATIONS["diverged"]
        assert adaptive is facts.adaptive, path.name
        cfg = compose_cfg(*FAST, f"optimizer={path.stem}", "model.dropout=0.0")
        assert (config_reason(cfg) is None) is facts.elementwise, path.name
    lbfgs = compose_cfg(*FAST, "optimizer._target_=torch.optim.LBFGS")
    assert "not elementwise" in config_reason(lbfgs)  # a class without a row never batches
