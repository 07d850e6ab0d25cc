"""Write params.yaml: conf/pipeline.yaml composed by Hydra (what `dvc exp run -S ...` also does).

python pipelines/compose_params.py [override ...] [--check]
"""

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def composed(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("pipeline", overrides=overrides), resolve=True)


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
        have = OmegaConf.to_container(OmegaConf.load(out), resolve=True) if out.exists() else None
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
