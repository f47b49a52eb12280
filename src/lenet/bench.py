"""``python -m lenet.bench``: forwards to ``lenet.tools.bench``."""

from lenet.tools.bench import main

if __name__ == "__main__":
    main()
