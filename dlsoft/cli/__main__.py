"""``python -m dlsoft.cli``: the same as the ``dlsoft`` command."""
from . import main

main()
