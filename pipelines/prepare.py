"""DVC stage `prepare`: build the dataset named in params.yaml into fixed splits with their digest.

python pipelines/prepare.py --params params.yaml --out data/prepared
"""

import argparse
import json

from tunelab.build import build_data
from tunelab.data.sources import export_splits
from tunelab.stages import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, _ = load_params(args.params)
    if "cache_dir" in cfg.data:
        cfg.data.cache_dir = None  # the stage's only output is --out
    splits = build_data(cfg.data)
    path = export_splits(splits, args.out)
    print(
        f"prepared {splits.name}: {json.dumps(splits.sizes())} digest {splits.digest[:12]} -> {path}"
    )


if __name__ == "__main__":
    main()
