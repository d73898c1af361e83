"""`python -m service.cli`: the `tailor` command (how the demo and tests start processes)."""

from service.cli import main

main()
