"""``python -m dlsoft``: the same as the ``dlsoft`` command."""
from dlsoft.cli import main

if __name__ == "__main__":
    main()
