"""``python -m cnnx``: the same as the ``cnnx`` command."""

from .cli import main

main()
