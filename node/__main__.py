"""`python -m node` runs the `ainode` command."""

from node.runner.cli import main

main()
