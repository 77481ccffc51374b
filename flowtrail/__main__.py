"""`python -m flowtrail ...`: the same as the `flowtrail` command."""

from flowtrail.cli import main

if __name__ == "__main__":
    main()
