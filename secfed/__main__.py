"""``python -m secfed`` runs the command line."""

from .cli import main

main()
