"""Write params.yaml: conf/pipeline.yaml composed by Hydra (what `dvc exp run -S ...` also does).

python pipelines/compose_params.py [override ...] [--check]
"""

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def composed(overrides: list[str]) -> dict:
    """The resolved config, but for `${oc.env:…}`: written as it is, so the environment's value
    (a tracking server's URL with its password, say) never reaches the git-tracked params.yaml;
    the stages resolve it when they run, as `python src/train.py` does."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("pipeline", overrides=overrides)
    _keep_env(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def _keep_env(node: DictConfig | ListConfig) -> None:
    """Escape every `${oc.env:` so that resolving yields the interpolation's own text."""
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            _keep_env(child)
        elif isinstance(raw := child._value(), str) and "${oc.env:" in raw:
            node[key] = raw.replace("${oc.env:", "\\${oc.env:")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 when params.yaml differs from conf/"
    )
    ap.add_argument("--out", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    want = composed(args.overrides)
    out = Path(args.out)
    if args.check:
        have = OmegaConf.to_container(OmegaConf.load(out)) if out.exists() else None
        if have != want:
            print(
                f"{out} is out of date with conf/: run python pipelines/compose_params.py",
                file=sys.stderr,
            )
            return 1
        return 0
    out.write_text(OmegaConf.to_yaml(want))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
