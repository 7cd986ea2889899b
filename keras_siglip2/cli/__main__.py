"""`python -m keras_siglip2.cli ...`: the `siglip2` command."""

import sys

from keras_siglip2.cli import main

if __name__ == "__main__":
    sys.exit(main())
