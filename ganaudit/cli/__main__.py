"""`python -m ganaudit.cli`: the same command line as the `ganaudit` executable."""

from . import main

if __name__ == "__main__":
    main()
