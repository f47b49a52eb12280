"""``python -m lenet.evaluate``: forwards to ``lenet.tools.evaluate``."""

from lenet.tools.evaluate import main

if __name__ == "__main__":
    main()
