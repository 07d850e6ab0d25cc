"""The private Hydra APIs named in tunelab/compat/hydra_internals.py still exist and behave as used: this
fails when a Hydra release changes them."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tunelab.compat import hydra_internals


def test_value_overrides_apply_with_hydras_semantics():
    cfg = OmegaConf.create({"a": {"b": 1}, "c": 2})
    parsed = OverridesParser.create().parse_overrides(["a.b=5", "+d=x", "~c"])
    hydra_internals.apply_value_overrides(parsed, cfg)
    assert OmegaConf.to_container(cfg) == {"a": {"b": 5}, "d": "x"}


def test_override_dirname_is_built_as_hydra_builds_it():
    parsed = OverridesParser.create().parse_overrides(["b=2", "a=1", "seed=3"])
    name = hydra_internals.get_overrides_dirname(
        parsed, exclude_keys=["seed"], item_sep=",", kv_sep="="
    )
    assert name == "a=1,b=2"


def test_launchers_are_told_apart():
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    assert hydra_internals.runs_in_process(BasicLauncher())
    assert not hydra_internals.runs_in_process(object())
    joblib_like = type("JoblibLike", (), {"joblib": {"n_jobs": 1}})()
    assert hydra_internals.set_parallel_jobs(joblib_like, 3) and joblib_like.joblib["n_jobs"] == 3
    assert not hydra_internals.set_parallel_jobs(BasicLauncher(), 3)


def test_hydras_own_launchers_are_what_compat_expects():
    from conftest import CONF
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for launcher, in_process in (("basic", True), ("joblib", False)):
            cfg = compose("train", [f"hydra/launcher={launcher}"], return_hydra_config=True)
            assert (cfg.hydra.launcher._target_ == hydra_internals.BASIC_LAUNCHER) is in_process
            instance = Plugins.instance().instantiate_launcher(
                config=cfg, hydra_context=HydraContext(None, None), task_function=print
            )
            assert hydra_internals.runs_in_process(instance) is in_process
            assert hydra_internals.set_parallel_jobs(instance, 2) is not in_process


def test_mlflow_says_which_server_runs_the_app_through_its_private_variable(monkeypatch):
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    from tunelab.compat import mlflow_internals

    monkeypatch.delenv(_MLFLOW_SGI_NAME.name, raising=False)
    assert mlflow_internals.server_name() is None
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "uvicorn")  # what `mlflow server` exports for uvicorn
    assert mlflow_internals.server_name() == "uvicorn"


def test_mlflows_ui_page_is_the_view_compat_replaces():
    from flask import Flask
    from mlflow.server import app as mlflow_app

    from tunelab.compat import mlflow_internals

    endpoint, _ = mlflow_app.url_map.bind("localhost").match("/")
    assert endpoint == mlflow_internals.UI_PAGE_VIEW and endpoint in mlflow_app.view_functions
    app = Flask("page")
    app.add_url_rule("/", mlflow_internals.UI_PAGE_VIEW, lambda: "mlflow's page")
    mlflow_internals.replace_ui_page(app, lambda mlflow_view: f"tunelab's, over {mlflow_view()}")
    assert app.test_client().get("/").get_data(as_text=True) == "tunelab's, over mlflow's page"


def test_torchs_fused_tensor_norms_are_each_tensors_norm():
    import torch

    from tunelab.compat import torch_internals

    tensors = [torch.randn(3, 4), torch.randn(5), torch.ones(2, dtype=torch.float64)]
    norms = torch_internals.tensor_norms(tensors)
    assert len(norms) == 3 and all(n.dim() == 0 for n in norms)
    for n, t in zip(norms, tensors, strict=True):
        assert torch.allclose(n, torch.linalg.vector_norm(t)) and n.dtype == t.dtype


def test_the_public_layer_classes_cover_torchs_private_bases():
    """Replica rules name batch norms and convolutions by their public classes: every public
    torch.nn class under the private bases they stand for (lazy ones aside) is listed."""
    from torch import nn

    from tunelab.run.replica_rules import BATCH_NORMS, CONVOLUTIONS

    for base, listed in (
        (nn.modules.batchnorm._BatchNorm, BATCH_NORMS),
        (nn.modules.conv._ConvNd, CONVOLUTIONS),
    ):
        public = {
            cls
            for cls in vars(nn).values()
            if isinstance(cls, type)
            and issubclass(cls, base)
            and not cls.__name__.startswith(("_", "Lazy", "Sync"))
        }
        assert public and public <= set(listed), sorted(c.__name__ for c in public - set(listed))


def test_submitits_slurm_watcher_reads_squeue_and_calls_an_unlisted_job_vanished():
    from submitit.slurm import slurm as submitit_slurm

    from tunelab.compat import submitit_internals

    assert isinstance(submitit_slurm.SlurmJob.watcher, submitit_slurm.SlurmInfoWatcher)
    watcher = submitit_internals.SqueueWatcher(delay_s=1)
    for job_id in ("41_0", "42_0", "43"):
        watcher.register_job(job_id)
    assert watcher._make_command()[0] == "squeue"
    watcher.register_job("44")  # submitted after squeue ran: not missing from its answer
    info = watcher.read_info(b"41_0|RUNNING|vm\n42_0|CANCELLED|vm\n")
    assert "44" not in info
    watcher._info_dict.update(info)
    states = {j: watcher.get_state(j, mode="cache") for j in ("41_0", "42_0", "43")}
    assert states == {"41_0": "RUNNING", "42_0": "CANCELLED", "43": "VANISHED"}
    assert not watcher.is_done("41_0", mode="cache")
    assert watcher.is_done("42_0", mode="cache") and watcher.is_done("43", mode="cache")
