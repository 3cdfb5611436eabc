"""``python -m secfed`` runs the command line."""

from .cli import main

if __name__ == "__main__":  # spawn-started worker processes re-import this module
    main()
