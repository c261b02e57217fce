"""`python -m vithybrid_cli` (also what `torchrun -m vithybrid_cli` launches)."""

from .cli import main

if __name__ == "__main__":
    main()
