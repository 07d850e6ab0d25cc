"""Hydra entry point: `python src/train.py [overrides]` or `python src/train.py -m [sweep]`."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from tunelab.startup import load_libraries

    load_libraries()  # before importing them: see tunelab/startup.py
    from tunelab.hydra_job import job

    return job(cfg)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from tunelab.command_line import check

    problems, warnings = check(sys.argv[1:], Path(__file__).resolve().parents[1] / "conf")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        raise SystemExit("error: " + "\n  ".join(problems))
    main()
