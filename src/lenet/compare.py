"""``python -m lenet.compare``: forwards to ``lenet.tools.compare``."""

from lenet.tools.compare import main

if __name__ == "__main__":
    main()
