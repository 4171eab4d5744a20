"""The quality bench (bench/quality.py): its two measures mean what its table says, and a whole run makes every picture and sheet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.quality import Judge, image_roles, report

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_photo_itself_is_unstyled_and_the_style_picture_is_all_style(rainier, autumn_oak, caffe_weights):
    judge = Judge(caffe_weights, torch.device("cpu"))
    photo = rainier.resize((240, 160))

    content, style = judge.measure(photo, photo, autumn_oak)
    # The photo at another resampling is near itself; the style picture in the photo's shape is far from the
    # photo's features and near the style's statistics.
    resampled_content, resampled_style = judge.measure(photo, rainier, autumn_oak)
    painting_content, painting_style = judge.measure(autumn_oak.resize((240, 160)), rainier, autumn_oak)

    assert content == pytest.approx(0, abs=1e-6) and style == pytest.approx(1.0)
    assert resampled_content < 0.05 and resampled_style == pytest.approx(1.0, abs=0.05)
    assert painting_content > 0.5 and painting_style < 0.5


def test_the_pairs_are_every_photo_with_every_painting_of_the_handed_out_images(images_dir):
    contents, styles = image_roles(images_dir)

    assert {"rainier.jpg", "tubingen.jpg"} <= set(contents) and {"autumn-oak.jpg", "starry_night.jpg", "the_scream.jpg"} <= set(styles)
    assert not set(contents) & set(styles)


# Four 520 px jobs and their measures on the real network: about two minutes here, so in the full tier.
@pytest.mark.full
def test_a_run_measures_every_method_s_picture_and_checks_the_default_against_its_450_px_picture_and_one_pass(
    tmp_path, images_dir, caffe_weights, models_dir
):
    environment = {**os.environ, "STYLEQ_MODEL_DIR": str(models_dir), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.quality",
            "--contents",
            "rainier.jpg",
            "--styles",
            "autumn-oak.jpg",
            "--sizes",
            "64,520",
            "--large-size",
            "0",
            "--iterations",
            "4",
            "--methods",
            "default,one-pass,previous",
            "--output",
            str(tmp_path),
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert run.returncode == 0, run.stderr
    pictures = json.loads((tmp_path / "pictures.json").read_text())
    # One pass at 64 px; at 520 px the default and the previous schedule are coarse-to-fine, with one pass beside them.
    assert sorted((p["size"], p["method"]) for p in pictures) == [
        (64, "default"),
        (520, "default"),
        (520, "one-pass"),
        (520, "previous"),
    ]
    for picture in pictures:
        with Image.open(tmp_path / picture["path"]) as made:
            assert made.size[0] == picture["size"]
        assert picture["content_distance"] >= 0 and picture["style_distance"] > 0
    assert "default at 520 px (1 pairs):" in run.stdout and "check(s) of the default failed" in run.stdout
    assert {path.name for path in tmp_path.glob("sheet-*.jpg")} == {f"sheet-{m}.jpg" for m in ("default", "one-pass", "previous")}


def test_the_report_fails_a_default_that_loses_the_photo_at_size():
    from bench.quality import Picture

    def made(size: int, method: str, content: float, style: float) -> Picture:
        return Picture("a.jpg", "b.jpg", size, method, 1.0, 10, content, style, "x.png")

    kept = [made(450, "default", 1.0, 0.2), made(1024, "default", 1.02, 0.21), made(1024, "one-pass", 1.0, 0.3)]
    lost = [made(450, "default", 1.0, 0.2), made(1024, "default", 1.5, 0.3), made(1024, "one-pass", 1.0, 0.28)]

    assert report(kept, 450)[-1] == "0 check(s) of the default failed"
    assert report(lost, 450)[-1] == "4 check(s) of the default failed"


def test_each_peer_is_held_against_the_default_on_both_measures_and_time():
    from bench.quality import Picture

    def made(method: str, content: float, style: float, seconds: float) -> Picture:
        return Picture("a.jpg", "b.jpg", 1024, method, seconds, 10, content, style, "x.png")

    ours = [made("default", 0.9, 0.01, 100.0), made("one-pass", 0.9, 0.02, 100.0)]
    slower_and_worse = made("nst-multires", 1.0, 0.02, 300.0)
    better_but_slower = made("crowsonkb", 0.8, 0.005, 3000.0)

    lines = report([*ours, slower_and_worse, better_but_slower], 450)

    assert any(line.startswith("  against nst-multires (1 pairs)") and line.endswith(": ok") for line in lines)
    assert any(line.startswith("  against crowsonkb (1 pairs)") and line.endswith(": NO") for line in lines)
    assert lines[-1] == "1 check(s) of the default failed"


def test_named_pairs_must_be_photo_colon_painting_and_in_the_images_folder(images_dir, capsys):
    from bench.quality import main

    with pytest.raises(SystemExit):
        main(["--pair", "rainier.jpg", "--images", str(images_dir)])
    assert "is not photo.jpg:painting.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--pair", "rainier.jpg:mona_lisa.jpg", "--images", str(images_dir), "--output", "/nonexistent/never-made"])
    assert "mona_lisa.jpg" in capsys.readouterr().err


def test_a_run_cut_short_is_reported_from_its_pictures_json(tmp_path, images_dir, capsys):
    from bench.quality import Picture, main

    def made(size: int, method: str, content: float, style: float) -> dict:
        path = f"rainier-autumn-oak-{size}-{method}.png"
        Image.new("RGB", (size, size * 2 // 3), "gray").save(tmp_path / path)
        return Picture("rainier.jpg", "autumn-oak.jpg", size, method, 1.0, 10, content, style, path).__dict__

    pictures = [made(64, "default", 1.0, 0.2), made(96, "default", 1.02, 0.21), made(96, "one-pass", 1.0, 0.3)]
    (tmp_path / "pictures.json").write_text(json.dumps(pictures))

    main(["--report-from", str(tmp_path / "pictures.json"), "--sizes", "64,96", "--images", str(images_dir)])

    printed = capsys.readouterr().out
    assert "rainier x autumn-oak" in printed and "default at 96 px (1 pairs):" in printed
    assert printed.count("\n") > 5 and "0 check(s) of the default failed" in printed
    assert (tmp_path / "sheet-default.jpg").is_file() and (tmp_path / "sheet-one-pass.jpg").is_file()
