"""Run the rack_stack command line."""

from __future__ import annotations

from rack_stack.cli import main

if __name__ == "__main__":
    main()
