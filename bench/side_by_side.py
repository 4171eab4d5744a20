"""Put pictures side by side, in the order given, with white gaps: how the README's gallery pictures are joined.

    .venv/bin/python -m bench.side_by_side OUT.png A.png B.png [C.png ...]

Pictures of other heights are scaled to the first one's height, keeping their aspect.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

GAP = 8


def side_by_side(pictures: list[Image.Image]) -> Image.Image:
    """Return the pictures in a row, scaled to the first one's height, GAP white pixels apart."""
    height = pictures[0].height
    scaled = [p if p.height == height else p.resize((round(p.width * height / p.height), height), Image.LANCZOS) for p in pictures]
    row = Image.new("RGB", (sum(p.width for p in scaled) + GAP * (len(scaled) - 1), height), "white")
    left = 0
    for picture in scaled:
        row.paste(picture.convert("RGB"), (left, 0))
        left += picture.width + GAP
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("pictures", type=Path, nargs="+")
    args = parser.parse_args(argv)
    side_by_side([Image.open(path) for path in args.pictures]).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
