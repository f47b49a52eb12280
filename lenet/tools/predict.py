"""python -m lenet.predict RUN_DIR IMAGE...: the class and its probability for each image file.

Images of any size, grayscale or colour, light or dark background: each is brought to the run's
image size as MNIST's digits were made, then preprocessed exactly as in training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from lenet.core.errors import UserError
from lenet.tools.inference import load_run


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: print ``IMAGE  CLASS  PROBABILITY`` for each image."""
    parser = argparse.ArgumentParser(prog="python -m lenet.predict", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's output dir, whose config and weights are used")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    args = parser.parse_args(argv)
    try:
        probabilities = load_run(args.run_dir, args.device).predict(args.images)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    confidence, predicted = probabilities.max(dim=1)
    for path, label, p in zip(args.images, predicted.tolist(), confidence.tolist()):
        print(f"{path}  {label}  {p:.3f}")


if __name__ == "__main__":
    main()
