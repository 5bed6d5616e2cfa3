"""``python -m instructmill``: the same as the ``instructmill`` command."""
from .cli import main

if __name__ == "__main__":  # guarded: vLLM's spawned engine re-imports the main module
    main()
