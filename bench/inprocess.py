"""`python src/train.py -m <overrides>` inside the calling process, so a benchmark can time it (and
read its study back) without a subprocess."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def multirun(overrides: list[str]) -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tunelab.hydra_job import job as task

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "conf"), job_name="train", version_base="1.3"):
        GlobalHydra.instance().hydra.multirun(
            config_name="train",
            task_function=task,
            overrides=overrides,
            with_log_configuration=False,
        )
