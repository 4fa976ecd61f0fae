"""`python -m node` runs the `ainode` command."""

from node.cli import main

main()
