"""Put pictures side by side, in the order given, with white gaps: how docs/GALLERY.md's pictures are joined.

    .venv/bin/python -m bench.side_by_side OUT.png A.png B.png [C.png ...] [--labels "a,b,c"]

Pictures of other heights are scaled to the first one's height, keeping their aspect. With --labels each
picture gets its caption centred in a white strip beneath it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GAP = 8
CAPTION_HEIGHT = 28
CAPTION_SIZE = 18


def side_by_side(pictures: list[Image.Image], labels: list[str] | None = None) -> Image.Image:
    """Return the pictures in a row, scaled to the first one's height, GAP white pixels apart, each over its label if given."""
    if labels is not None and len(labels) != len(pictures):
        raise ValueError(f"{len(labels)} labels for {len(pictures)} pictures")
    height = pictures[0].height
    scaled = [
        p if p.height == height else p.resize((round(p.width * height / p.height), height), Image.Resampling.LANCZOS) for p in pictures
    ]
    caption = CAPTION_HEIGHT if labels else 0
    row = Image.new("RGB", (sum(p.width for p in scaled) + GAP * (len(scaled) - 1), height + caption), "white")
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default(size=CAPTION_SIZE)
    left = 0
    for index, picture in enumerate(scaled):
        row.paste(picture.convert("RGB"), (left, 0))
        if labels:
            draw.text((left + picture.width / 2, height + caption / 2), labels[index], fill="black", font=font, anchor="mm")
        left += picture.width + GAP
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("pictures", type=Path, nargs="+")
    parser.add_argument("--labels", help="Comma-separated captions, one per picture.")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    side_by_side([Image.open(path) for path in args.pictures], labels).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
