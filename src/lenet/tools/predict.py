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
from lenet.tools.images import NoStrokes
from lenet.tools.inference import add_loading_arguments, load_run


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: print ``IMAGE  CLASS  PROBABILITY`` for each image; a bad image is one line, the others go on."""
    parser = argparse.ArgumentParser(prog="python -m lenet.predict", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's output dir, whose config and weights are used")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    add_loading_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run_dir, args.device, trust=args.trust, weights=args.weights)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    failed = 0
    for path in args.images:
        try:
            probabilities = run.predict([path])[0]
        except NoStrokes as e:  # not a failure: nothing to classify
            print(f"{path}  -  {e}")
            continue
        except UserError as e:  # one bad file: said, and the others still predicted
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        confidence, label = probabilities.max(dim=0)
        print(f"{path}  {int(label)}  {float(confidence):.3f}")
    if failed:
        print(f"error: {failed} of {len(args.images)} images could not be read", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
