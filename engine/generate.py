"""`python -m engine.generate`: the command-line entry point (the code lives in `engine.generation`).

Kept apart so that `engine.generate` the function (`engine/__init__.py`) is never shadowed by this module:
import `engine.generation` in code, not this file.
"""

import sys

from engine.generation import main

if __name__ == "__main__":
    sys.exit(main())
