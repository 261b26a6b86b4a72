"""`python -m dasuite` and `accelerate launch -m dasuite` entry point."""

from dasuite.cli import main

if __name__ == "__main__":
    main()
