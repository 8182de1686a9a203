"""`python -m engine.generate`: the command-line entry point; the code (CLI included) is `engine.serving.offline`.

Only ever run with `python -m`: importing this module would set the attribute `engine.generate` to it, shadowing
the function `engine.generate` (`engine/__init__.py`). In code, import `engine.serving.offline`.
"""

import sys

from engine.serving.offline import main

if __name__ == "__main__":
    sys.exit(main())
