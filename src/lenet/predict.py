"""``python -m lenet.predict``: forwards to ``lenet.tools.predict``."""

from lenet.tools.predict import main

if __name__ == "__main__":
    main()
