"""`python -m styleq.cli ARGS`: the `styleq` command without the console script (how `styleq up` starts its worker)."""

from styleq.cli import main

main(prog_name="styleq")
