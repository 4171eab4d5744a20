"""`styleq transfer` and `styleq weights` through the real command group, on local random-weight files."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from typing import cast

import click
import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner, Result
from PIL import ExifTags, Image
from torchvision.models import vgg

from styleq.cli import main
from styleq.cli.client import _job_params
from styleq.shared.adapters.db import make_engine, make_session_factory
from styleq.shared.adapters.outputs import read_metadata
from styleq.shared.adapters.secret_key import load_secret_key
from styleq.shared.adapters.settings import Settings
from styleq.shared.service.keys import authenticate

HISTORY_HEADER = ["iteration", "elapsed_s", "content", "style", "tv", "total", "scale"]


def write_random_vgg(architecture: str, path: Path, seed: int = 0) -> Path:
    """Write the `features.*` state of a seeded, untrained torchvision VGG to a .safetensors file.

    Only the convolutions are made, initialised as torchvision initialises a VGG's (its classifier's 120 million
    weights, which the file leaves out, would cost ten times as much to draw).
    """
    torch.manual_seed(seed)
    features = vgg.make_layers(vgg.cfgs[{"vgg16": "D", "vgg19": "E"}[architecture]])
    for layer in features:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(cast(torch.Tensor, layer.bias))
    safetensors.torch.save_file({f"features.{key}": value.contiguous() for key, value in features.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def vgg16_file(tmp_path_factory) -> Path:
    return write_random_vgg("vgg16", tmp_path_factory.mktemp("weights") / "vgg16-random.safetensors")


@pytest.fixture(scope="session")
def vgg19_file(tmp_path_factory) -> Path:
    return write_random_vgg("vgg19", tmp_path_factory.mktemp("weights") / "vgg19-random.safetensors")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, images_dir) -> tuple[Path, Path]:
    """Small copies of the seed's content and style images, so each run decodes a few pixels, not a megapixel."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for name in ("rainier.jpg", "autumn-oak.jpg"):
        with Image.open(images_dir / name) as image:
            image.convert("RGB").resize((64, 48)).save(folder / name)
        paths.append(folder / name)
    return paths[0], paths[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run torch on one thread: 24x32 pictures gain nothing from more, and on a busy machine threads fight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    """Point styleq's data directory, and the user cache directory its model directory is in, at fresh folders, so no test reads or writes the user's."""
    path = tmp_path / "data"
    monkeypatch.setenv("STYLEQ_DATA_DIR", str(path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STYLEQ_MODEL_DIR", raising=False)
    return path


@pytest.fixture
def out(tmp_path) -> Path:
    """An empty folder for everything a command writes, so a test can tell that a failure wrote nothing."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def styleq(*args: str | Path) -> Result:
    """Run `styleq ARGS` in-process and return click's result."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def small_transfer(inputs: tuple[Path, Path], weights: Path, output: Path, *extra: str | Path) -> Result:
    """Run a tiny CPU transfer with the styleq preset on random Caffe-convention VGG16 weights."""
    content, style = inputs
    return styleq(
        "transfer",
        content,
        style,
        "-o",
        output,
        "--weights",
        weights,
        "--convention",
        "caffe",
        "--size",
        "24x32",
        "--device",
        "cpu",
        "-q",
        *extra,
    )


def assert_succeeded(result: Result) -> None:
    """Fail with the command's output and exception unless it exited 0."""
    assert result.exit_code == 0, (result.output, result.exception)


def test_transfer_writes_a_png_of_the_requested_height_and_width(inputs, vgg16_file, out):
    result = small_transfer(inputs, vgg16_file, out / "picture.png", "--iterations", "3")

    assert_succeeded(result)
    with Image.open(out / "picture.png") as picture:
        # --size is HEIGHTxWIDTH, PIL's size is (width, height).
        assert (picture.format, picture.size) == ("PNG", (32, 24))
    assert "after 3 iterations" in result.output


def test_coarse_to_fine_from_the_command_line_ends_at_the_requested_size(inputs, vgg16_file, out):
    result = small_transfer(
        inputs, vgg16_file, out / "picture.png", "--size", "48x64", "--iterations", "6", "--scales", "0.5,1", "--scale-iterations", "4,2"
    )

    assert_succeeded(result)
    with Image.open(out / "picture.png") as picture:
        assert picture.size == (64, 48)


def test_colors_content_keeps_the_content_pictures_colours(inputs, vgg16_file, out):
    styled = small_transfer(inputs, vgg16_file, out / "styled.png", "--iterations", "10", "--lr", "0.1")
    kept = small_transfer(inputs, vgg16_file, out / "kept.png", "--iterations", "10", "--lr", "0.1", "--colors", "content")

    assert_succeeded(styled)
    assert_succeeded(kept)
    with Image.open(inputs[0]) as content, Image.open(out / "styled.png") as styled_picture, Image.open(out / "kept.png") as kept_picture:
        # Cb and Cr, the colour without the light (0-255, as Pillow stores them).
        chroma = [
            np.asarray(picture.convert("YCbCr"), dtype=np.float64)[..., 1:]
            for picture in (content.resize((32, 24)), styled_picture, kept_picture)
        ]
    assert np.abs(chroma[2] - chroma[0]).mean() < 1 < np.abs(chroma[1] - chroma[0]).mean()


def test_an_unknown_colors_value_is_refused_naming_the_choices(inputs, vgg16_file, out):
    result = small_transfer(inputs, vgg16_file, out / "picture.png", "--colors", "original")

    assert result.exit_code != 0 and "'style', 'content', 'histogram'" in result.output
    assert list(out.iterdir()) == []


def test_submit_passes_colors_with_the_other_parameter_flags():
    assert _job_params('{"iterations": 5}', None, size=(300, 450), colors="histogram") == {
        "iterations": 5,
        "size": (300, 450),
        "colors": "histogram",
    }


def test_submit_passes_the_style_loss_format_and_quality_and_takes_the_format_from_the_output_name(tmp_path):
    assert _job_params(None, None, style_loss="moments", format="jpeg", quality=80) == {
        "style_loss": "moments",
        "format": "jpeg",
        "quality": 80,
    }
    assert _job_params(None, None, tmp_path / "out.webp") == {"format": "webp"}
    assert _job_params('{"format": "jpeg"}', None, tmp_path / "out.JPG") == {"format": "jpeg"}
    with pytest.raises(click.BadParameter, match=r"out.png is not a webp file name: with format webp it should end in .webp"):
        _job_params(None, None, tmp_path / "out.png", format="webp")


def test_style_loss_moments_from_the_command_line(inputs, vgg16_file, out):
    # Up to relu3_1: the deeper layers' 512-channel square roots would cost more than the test needs.
    result = small_transfer(
        inputs, vgg16_file, out / "picture.png", "--iterations", "2", "--style-loss", "moments", "--style-layers", "relu1_1,relu2_1,relu3_1"
    )

    assert_succeeded(result)
    assert read_metadata(out / "picture.png")["params"]["style_loss"] == "moments"


def test_the_output_names_extension_picks_the_format_and_the_parameters_travel_inside(inputs, vgg16_file, out):
    for name, pillow in (("picture.webp", "WEBP"), ("picture.jpg", "JPEG"), ("picture.png", "PNG")):
        result = small_transfer(inputs, vgg16_file, out / name, "--iterations", "1", "--quality", "70")

        assert_succeeded(result)
        with Image.open(out / name) as picture:
            assert picture.format == pillow
        metadata = read_metadata(out / name)
        # A weights file is named in the metadata by its name alone.
        assert metadata["weights"] == vgg16_file.name and metadata["params"]["quality"] == 70
        assert metadata["params"]["format"] == {"WEBP": "webp", "JPEG": "jpeg", "PNG": "png"}[pillow]


def test_a_format_the_output_name_contradicts_is_refused_before_the_run(inputs, vgg16_file, out):
    result = small_transfer(inputs, vgg16_file, out / "picture.png", "--format", "jpeg")

    assert result.exit_code != 0 and "picture.png is not a jpeg file name" in result.output and ".jpg, .jpeg" in result.output
    assert list(out.iterdir()) == []


@pytest.fixture
def second_style(inputs, tmp_path) -> Path:
    """Another small style picture: the first one's colours inverted."""
    path = tmp_path / "inverted.png"
    with Image.open(inputs[1]) as style:
        Image.eval(style, lambda level: 255 - level).save(path)
    return path


def test_transfer_blends_several_style_pictures_by_their_weights(inputs, second_style, vgg16_file, out):
    blended = styleq(
        "transfer",
        inputs[0],
        inputs[1],
        second_style,
        "--style-weights",
        "0.7,0.3",
        "-o",
        out / "blend.png",
        "--weights",
        vgg16_file,
        "--convention",
        "caffe",
        "--size",
        "24x32",
        "--device",
        "cpu",
        "--iterations",
        "5",
        "--lr",
        "0.1",
        "-q",
    )
    alone = small_transfer(inputs, vgg16_file, out / "alone.png", "--iterations", "5", "--lr", "0.1")

    assert_succeeded(blended)
    assert_succeeded(alone)
    with Image.open(out / "blend.png") as blend, Image.open(out / "alone.png") as single:
        assert blend.size == (32, 24) and blend.tobytes() != single.tobytes()


@pytest.mark.parametrize(
    ("styles", "weights", "expected"),
    [
        (5, None, "give 1 to 4 STYLE images"),
        (2, "1", "1 weight(s) for 2 STYLE image(s)"),
        (1, "1,1", "2 weight(s) for 1 STYLE image(s)"),
        (2, "0.7,lots", "comma-separated numbers"),
        (2, "1,0", "positive numbers"),
    ],
    ids=["five styles", "too few weights", "weights for one style", "not numbers", "a zero weight"],
)
@pytest.mark.parametrize("command", ["transfer", "submit"])
def test_styles_and_weights_that_do_not_fit_are_refused_before_anything_runs(inputs, vgg16_file, out, command, styles, weights, expected):
    options = ["--style-weights", weights] if weights else []
    if command == "transfer":
        options += ["-o", out / "picture.png", "--weights", vgg16_file, "--convention", "caffe", "--size", "24x32", "--device", "cpu"]
    else:
        options += ["--url", "http://127.0.0.1:9", "--key", "sq_unused"]  # refused before any request

    result = styleq(command, inputs[0], *[inputs[1]] * styles, *options)

    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, (result.output, result.exception)
    assert expected in result.output
    assert list(out.iterdir()) == []


# Two checkpoints of two iterations each: one every ten (the default) is checked by the seed preset's run.
CHECKPOINTS = ("--iterations", "4", "--checkpoint-every", "2")


def test_history_csv_has_the_header_and_one_row_per_checkpoint(inputs, vgg16_file, out):
    result = small_transfer(inputs, vgg16_file, out / "picture.png", *CHECKPOINTS, "--history", out / "history.csv")

    assert_succeeded(result)
    with (out / "history.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == HISTORY_HEADER
    assert [int(row[0]) for row in rows[1:]] == [2, 4]
    for row in rows[1:]:
        elapsed, *losses, scale = map(float, row[1:])
        assert elapsed > 0 and all(math.isfinite(loss) and loss >= 0 for loss in losses) and scale == 1


def test_history_json_is_a_list_of_one_object_per_checkpoint(inputs, vgg16_file, out):
    result = small_transfer(inputs, vgg16_file, out / "picture.png", *CHECKPOINTS, "--history", out / "history.json")

    assert_succeeded(result)
    rows = json.loads((out / "history.json").read_text())
    assert isinstance(rows, list)
    assert [list(row) for row in rows] == [HISTORY_HEADER, HISTORY_HEADER]
    assert [row["iteration"] for row in rows] == [2, 4]
    assert all(isinstance(row[name], float) for row in rows for name in HISTORY_HEADER[1:])


def test_plot_writes_a_png(inputs, vgg16_file, out):
    result = small_transfer(inputs, vgg16_file, out / "picture.png", *CHECKPOINTS, "--plot", out / "losses.png")

    assert_succeeded(result)
    with Image.open(out / "losses.png") as plot:
        assert plot.format == "PNG"


def test_plot_without_matplotlib_installed_says_how_to_get_it_and_runs_nothing(inputs, vgg16_file, out, monkeypatch):
    # An install without the `plot` extra: matplotlib is not to be found.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "matplotlib" else find_spec(name, *args))

    result = small_transfer(inputs, vgg16_file, out / "picture.png", "--plot", out / "losses.png")

    assert result.exit_code == 2 and "--plot needs matplotlib" in result.output and "styleq[plot]" in result.output
    assert list(out.iterdir()) == []


def test_seed_preset_runs_on_a_vgg19_file(inputs, vgg19_file, out):
    content, style = inputs
    result = styleq(
        "transfer",
        content,
        style,
        "-o",
        out / "seed.jpg",
        "--preset",
        "seed",
        "--weights",
        vgg19_file,
        "--size",
        "24x32",
        "--iterations",
        "10",
        "--device",
        "cpu",
        "-q",
        "--history",
        out / "seed.csv",
    )

    assert_succeeded(result)
    with Image.open(out / "seed.jpg") as picture:
        assert (picture.format, picture.size) == ("JPEG", (32, 24))
    with (out / "seed.csv").open(newline="") as file:
        assert [row["iteration"] for row in csv.DictReader(file)] == ["10"]


def test_a_photo_stored_sideways_is_painted_upright_as_the_service_paints_it(inputs, vgg16_file, tmp_path, out):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # turn a quarter clockwise to view
    with Image.open(inputs[0]) as upright:
        upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif.tobytes())

    result = small_transfer((tmp_path / "sideways.jpg", inputs[1]), vgg16_file, out / "picture.png", "--size", "32", "--iterations", "1")

    assert_succeeded(result)
    with Image.open(out / "picture.png") as picture:
        assert picture.size == (32, 24)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"CONTENT": "{tmp}/x.jpg"}, ["cannot read the content image", "x.jpg"], id="unreadable-content"),
        pytest.param({"STYLE": "{tmp}/cut.jpg"}, ["cannot read the style image", "cut.jpg", "damaged or incomplete"], id="style-cut-short"),
        pytest.param(
            {"--size": "16"}, ["--size", "64x48", "the smallest size that works for this content is 21"], id="long-side-too-small"
        ),
        pytest.param({"--size": "300by450"}, ["--size", "300by450"], id="bad-size"),
        pytest.param({"--iterations": "0"}, ["iterations", "got 0"], id="zero-iterations"),
        pytest.param({"--optimizer": "sgd"}, ["--optimizer", "sgd"], id="unknown-optimizer"),
        pytest.param({"--weights": "{out}/missing.safetensors"}, ["missing.safetensors", "does not exist"], id="missing-weights-file"),
        pytest.param({"-o": "{out}/picture.txt"}, ["--output", "picture.txt"], id="txt-output"),
        pytest.param({"--weights": "nosuchname"}, ["unknown weights", "nosuchname"], id="unknown-weights-name"),
        pytest.param({"--scales": "0.5,half"}, ["--scales", "0.5,half"], id="scales-not-numbers"),
        pytest.param({"--scales": "1,0.5"}, ["scales must rise strictly"], id="falling-scales"),
        pytest.param(
            {"--scales": "0.5,1", "--scale-iterations": "1,5"},
            ["scale_iterations must add up to iterations (2)"],
            id="scale-iterations-off",
        ),
        pytest.param(
            {"--size": "256x384", "--max-pass-pixels": "20000"},
            ["--max-pass-pixels", "must be at least 30976"],
            id="pass-under-the-smallest-tile",
        ),
    ],
)
def test_bad_input_is_reported_and_exits_non_zero_without_writing_anything(inputs, vgg16_file, tmp_path, out, overrides, expected):
    (tmp_path / "x.jpg").write_text("not a picture\n")
    (tmp_path / "cut.jpg").write_bytes(inputs[1].read_bytes()[:-400])
    options = {
        "CONTENT": str(inputs[0]),
        "STYLE": str(inputs[1]),
        "-o": "{out}/picture.png",
        "--weights": str(vgg16_file),
        "--convention": "caffe",
        "--size": "24x32",
        "--iterations": "2",
        "--device": "cpu",
        "--history": "{out}/history.csv",
        "--plot": "{out}/losses.png",
    }
    options.update(overrides)
    options = {key: value.format(tmp=tmp_path, out=out) for key, value in options.items()}
    named = [part for key, value in options.items() if key.startswith("-") for part in (key, value)]

    result = styleq("transfer", options["CONTENT"], options["STYLE"], *named, "-q")

    # A clean error leaves through click's SystemExit; anything else is an unhandled exception.
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, (result.output, result.exception)
    for fragment in expected:
        assert fragment in result.output
    assert list(out.iterdir()) == []


def test_weights_list_shows_every_registry_entry_not_pulled_in_an_empty_model_dir(tmp_path):
    result = styleq("weights", "list")

    assert_succeeded(result)
    # Weights are a cache, shared by every data directory: in the user cache directory unless STYLEQ_MODEL_DIR says otherwise.
    assert f"Model directory: {tmp_path / 'cache' / 'styleq' / 'models'}" in result.output
    states = {line.split()[0]: line for line in result.output.splitlines()[1:] if line.strip()}
    assert set(states) == {"vgg16-caffe", "vgg16", "vgg19"}
    assert all("not pulled" in line for line in states.values())


def test_weights_pull_of_an_unknown_name_fails(data_dir):
    result = styleq("weights", "pull", "nosuch")

    assert result.exit_code != 0
    assert "nosuch" in result.output
    assert not (data_dir / "models").exists() and not (data_dir.parent / "cache").exists()


@pytest.fixture
def service_database(database_url, monkeypatch) -> str:
    """Point `styleq keys` at a migrated database (SQLite and Postgres), with the server secret kept in the data directory."""
    monkeypatch.setenv("STYLEQ_DATABASE_URL", database_url)
    monkeypatch.delenv("STYLEQ_SECRET_KEY", raising=False)
    return database_url


def key_rows(result: Result) -> dict[str, dict[str, str]]:
    """Parse `styleq keys list` into {name: {column: value}} (names and times hold no double spaces)."""
    assert_succeeded(result)
    header, *lines = result.stdout.splitlines()
    columns = header.split()
    rows = [dict(zip(columns, [cell.strip() for cell in line.split("  ") if cell.strip()])) for line in lines]
    return {row["NAME"]: row for row in rows}


def test_keys_list_shows_each_key_without_its_secret(service_database, data_dir):
    alice = styleq("keys", "create", "--name", "alice")
    ops = styleq("keys", "create", "--name", "ops", "--admin")
    tokens = [result.stdout.strip() for result in (alice, ops)]

    listing = styleq("keys", "list")

    rows = key_rows(listing)
    assert set(rows) == {"alice", "ops"}
    assert [rows[name]["ID"] for name in ("alice", "ops")] == ["1", "2"]
    assert rows["alice"]["ADMIN"] == "no" and rows["ops"]["ADMIN"] == "yes"
    assert all(rows[name]["REVOKED"] == "-" and rows[name]["CREATED"].endswith("Z") for name in rows)
    for token, name in zip(tokens, ("alice", "ops")):
        assert token.startswith(rows[name]["PREFIX"]) and len(rows[name]["PREFIX"]) == 10
        assert token not in listing.output
    assert (data_dir / "secret-key").is_file()


def test_keys_revoke_by_prefix_or_id_stops_the_key_from_authenticating(service_database, data_dir):
    tokens = {name: styleq("keys", "create", "--name", name).stdout.strip() for name in ("alice", "bob")}
    prefix = tokens["alice"][:10]

    by_prefix, by_id = styleq("keys", "revoke", prefix), styleq("keys", "revoke", "2")
    again = styleq("keys", "revoke", prefix)

    for result in (by_prefix, by_id, again):
        assert_succeeded(result)
    assert f"Revoked key 1 ('alice', {prefix})" in by_prefix.output and "Revoked key 2 ('bob'" in by_id.output
    assert "already revoked" in again.output
    rows = key_rows(styleq("keys", "list"))
    assert rows["alice"]["REVOKED"].endswith("Z") and rows["bob"]["REVOKED"].endswith("Z")
    settings = Settings(data_dir=data_dir, database_url=service_database)
    engine = make_engine(service_database)
    try:
        with make_session_factory(engine)() as session:
            assert all(authenticate(session, token, secret=load_secret_key(settings)) is None for token in tokens.values())
    finally:
        engine.dispose()


@pytest.mark.parametrize("unknown", ["sq_nothing", "42", "alice"])
def test_keys_revoke_of_an_unknown_key_fails_and_changes_nothing(service_database, unknown):
    assert_succeeded(styleq("keys", "create", "--name", "alice"))

    result = styleq("keys", "revoke", unknown)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Error: no API key has the id" in result.output and unknown in result.output and "styleq keys list" in result.output
    assert key_rows(styleq("keys", "list"))["alice"]["REVOKED"] == "-"


def test_keys_list_of_an_empty_database_says_how_to_make_one(service_database):
    result = styleq("keys", "list")

    assert_succeeded(result)
    assert result.stdout == "" and "styleq keys create" in result.stderr


def test_keys_create_shows_the_key_s_webhook_secret_once_beside_the_key(service_database, data_dir):
    from styleq.shared.service.webhooks import webhook_secret

    result = styleq("keys", "create", "--name", "hooks")

    assert_succeeded(result)
    assert result.stdout.strip().startswith("sq_") and "whsec_" not in result.stdout
    signing = result.stderr.split("(shown only now): ")[1].split()[0]
    assert signing == webhook_secret(load_secret_key(Settings(data_dir=data_dir)), 1, 1)


def test_rotating_a_key_s_webhook_secret_prints_the_new_one_and_the_old_one_signs_for_a_day(service_database, data_dir):
    from styleq.shared.adapters.models import utcnow
    from styleq.shared.service.keys import find_api_key
    from styleq.shared.service.webhooks import signing_secrets, webhook_secret

    token = styleq("keys", "create", "--name", "hooks").stdout.strip()

    rotated = styleq("keys", "rotate-webhook-secret", token[:10])
    unknown = styleq("keys", "rotate-webhook-secret", "sq_nothing")

    assert_succeeded(rotated)
    server_secret = load_secret_key(Settings(data_dir=data_dir))
    assert rotated.stdout.strip() == webhook_secret(server_secret, 1, 2) and "24 hours" in rotated.stderr
    assert unknown.exit_code == 1 and "no API key has the id or prefix" in unknown.output
    engine = make_engine(service_database)
    try:
        with make_session_factory(engine)() as session:
            key = find_api_key(session, "1")
            assert signing_secrets(server_secret, key, utcnow()) == [
                webhook_secret(server_secret, 1, 2),
                webhook_secret(server_secret, 1, 1),
            ]
    finally:
        engine.dispose()


def test_submit_needs_a_webhook_url_for_webhook_events(inputs):
    result = styleq("submit", *inputs, "--key", "sq_x", "--webhook-events", "succeeded")

    assert result.exit_code == 2 and "--webhook-events needs --webhook-url" in result.output
