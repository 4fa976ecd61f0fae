"""The ``ainode`` command's entry point, importing nothing until it runs.

The node's processes are started with multiprocessing's ``spawn``, which imports
the command's own script again in every child before the child's code runs; a
heavy import here would delay the moment each child asks to die with the node
(:mod:`node.runner.child`).
"""

from __future__ import annotations


def main() -> None:
    from node.runner.cli import main as run_command

    run_command()
