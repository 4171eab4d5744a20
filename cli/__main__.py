"""`python -m cli ARGS`: the `styleq` command without the console script (how `styleq up` starts its worker)."""

from cli import main

main(prog_name="styleq")
