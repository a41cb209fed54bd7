"""`python -m ganaudit`: the same command line as the `ganaudit` executable."""

from .cli import main

if __name__ == "__main__":
    main()
