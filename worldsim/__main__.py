"""``python -m worldsim`` runs the command-line interface."""

import sys

from worldsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
