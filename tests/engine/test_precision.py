"""bf16 runs the network, fp32 keeps the sums: the bf16 engine tracks the fp32 one and nothing overflows at any size."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from styleq.shared.domain.params import resolve_params
from styleq.worker.engine import Backbone, build_backbone, get_convention, losses, native_bf16, resolve_precision, transfer
from styleq.worker.engine import precision as precisions
from styleq.worker.engine.graphs import portable_optimizer_state
from styleq.worker.engine.losses import gram_matrices, style_losses
from styleq.worker.engine.objective import Objective
from styleq.worker.engine.precision import network_precision
from styleq.worker.precision_choice import ChoiceFile


def test_auto_is_bf16_exactly_where_the_device_computes_it_natively_and_faster():
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") and precisions._cpu_bf16_is_faster() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize(
    ("native", "bf16_seconds", "fp32_seconds", "chosen"),
    [(True, 0.5, 1.0, "bf16"), (True, 1.3, 1.0, "fp32"), (True, 0.95, 1.0, "fp32"), (False, 0.5, 1.0, "fp32")],
    ids=["native and twice as fast", "native and slower", "native and about even", "emulated"],
)
def test_on_a_cpu_auto_takes_bf16_only_where_it_is_native_and_clearly_faster(monkeypatch, native, bf16_seconds, fp32_seconds, chosen):
    monkeypatch.setattr(precisions, "native_bf16", lambda device: native)
    monkeypatch.setattr(precisions, "_timed_rounds", lambda: [(bf16_seconds, fp32_seconds)] * 5)
    # This process's own timing is cached; the check runs uncached against the timings above.
    monkeypatch.setattr(precisions, "_cpu_bf16_is_faster", precisions._cpu_bf16_is_faster.__wrapped__)

    assert precisions.resolve_precision("auto", "cpu") == chosen
    assert precisions.resolve_precision("fp32", "cpu") == "fp32" and precisions.resolve_precision("bf16", "cpu") == "bf16"


def test_the_cpu_timing_times_both_precisions():
    # One round (after the passes that build the kernels): where bf16 is emulated, each pass is seconds.
    rounds = precisions._timed_rounds(rounds=1)
    assert len(rounds) == 1 and all(bf16 > 0 and fp32 > 0 for bf16, fp32 in rounds)


def test_the_cpu_timing_is_taken_once_per_process(monkeypatch):
    timings: list[int] = []

    def timed_rounds() -> list[tuple[float, float]]:
        timings.append(1)
        return [(0.5, 1.0)] * 5

    monkeypatch.setattr(precisions, "_timed_rounds", timed_rounds)
    precisions._cpu_bf16_is_faster.cache_clear()
    try:
        assert precisions._cpu_bf16_is_faster() is precisions._cpu_bf16_is_faster() is True
        assert len(timings) == 1
    finally:
        # The next caller in this process times this CPU for real.
        precisions._cpu_bf16_is_faster.cache_clear()


@pytest.fixture
def choice_file(tmp_path, monkeypatch):
    """A host's choice file, kept by this process from now on, with this process's own timing forgotten before and after."""
    store = ChoiceFile(tmp_path / "models")
    monkeypatch.setattr(precisions, "_choice_store", None)  # restored after the test, whatever it sets
    precisions.keep_cpu_choice_in(store)
    precisions._cpu_bf16_is_faster.cache_clear()
    yield store.path
    precisions._cpu_bf16_is_faster.cache_clear()


def stand_in_timing(monkeypatch, bf16_seconds: float, fp32_seconds: float) -> list[int]:
    """Make the timing return these seconds; return the list that counts the timings taken."""
    taken: list[int] = []

    def timed_rounds() -> list[tuple[float, float]]:
        taken.append(1)
        return [(bf16_seconds, fp32_seconds)] * 5

    monkeypatch.setattr(precisions, "_timed_rounds", timed_rounds)
    return taken


def test_the_first_process_of_a_host_times_the_cpu_and_the_next_ones_take_its_choice_from_the_model_directory(choice_file, monkeypatch):
    first = stand_in_timing(monkeypatch, 0.5, 1.0)
    assert precisions._cpu_bf16_is_faster() is True and len(first) == 1
    kept = json.loads(choice_file.read_text())
    assert kept["bf16_is_faster"] is True and kept["bf16_over_fp32"] == 0.5
    assert kept["timed_on"]["torch"] == torch.__version__ and kept["timed_on"]["threads"] == torch.get_num_threads()

    precisions._cpu_bf16_is_faster.cache_clear()  # as a new process on the same host
    later = stand_in_timing(monkeypatch, 2.0, 1.0)  # a timing now would say fp32

    assert precisions._cpu_bf16_is_faster() is True and later == []
    assert [path.name for path in choice_file.parent.iterdir()] == [choice_file.name]  # no temporary file left


@pytest.mark.parametrize(
    "kept",
    [
        {"timed_on": {"cpu": "another CPU, the model directory copied from its host"}, "bf16_is_faster": True},
        "{not json",
        {"bf16_is_faster": "yes"},
    ],
    ids=["timed on another cpu", "unreadable", "no answer"],
)
def test_a_choice_timed_elsewhere_or_unreadable_is_timed_again_and_replaced(choice_file, monkeypatch, kept):
    choice_file.parent.mkdir(parents=True)
    choice_file.write_text(kept if isinstance(kept, str) else json.dumps(kept))
    taken = stand_in_timing(monkeypatch, 2.0, 1.0)

    assert precisions._cpu_bf16_is_faster() is False and len(taken) == 1
    assert json.loads(choice_file.read_text())["bf16_is_faster"] is False


def test_a_model_directory_that_cannot_be_written_costs_a_timing_per_process_and_nothing_else(choice_file, monkeypatch, caplog):
    choice_file.parent.write_text("a file where the directory should be")
    taken = stand_in_timing(monkeypatch, 0.5, 1.0)

    assert precisions._cpu_bf16_is_faster() is True and len(taken) == 1
    assert "could not keep the CPU's choice of precision" in caplog.text


def test_presets_keep_the_seed_exact_and_let_styleq_choose():
    assert resolve_params({"preset": "seed"}).precision == "fp32"
    assert resolve_params({}).precision == "auto"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        resolve_params({"precision": "fp16"})


def test_gram_matrices_of_bf16_features_are_fp32_and_equal_the_fp32_gram_of_the_same_values():
    features = torch.randn(2, 8, 16, 16).to(torch.bfloat16)

    grams = gram_matrices(features)

    assert grams.dtype == torch.float32 and grams.shape == (2, 8, 8)
    torch.testing.assert_close(grams, gram_matrices(features.float()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bf16_products", ["as this CPU has them", "on a CPU without them"])
def test_a_cpus_gram_of_bf16_features_has_fp32_sums_and_leaves_the_process_matmul_setting_as_it_was(monkeypatch, bf16_products):
    # On a CPU with native bf16 the Gram's products run as bf16 products with fp32 sums (the operands hold bf16
    # values already); on one without, as fp32 products.
    if bf16_products == "on a CPU without them":
        monkeypatch.setattr(losses, "_cpu_has_native_bf16", lambda: False)
    features = (torch.randn(1, 64, 90, 120, generator=torch.Generator().manual_seed(0)) * 4).relu()
    features = features.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    before = torch.backends.mkldnn.matmul.fp32_precision

    gram = gram_matrices(features)

    flat = features.double().flatten(2)
    exact = torch.bmm(flat, flat.transpose(1, 2)) / (64 * 90 * 120)
    # Measured 1.1e-7 of the norm, as an fp32 product of the widened features; a bf16 product with a bf16 result: 1.4e-3.
    assert float((gram.double() - exact).norm() / exact.norm()) < 1e-6
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@pytest.mark.parametrize("form", ["cpu", "cpu in ragged slices", "split"])
def test_the_bf16_gram_backward_is_the_gradient_of_its_forward(monkeypatch, form):
    # "cpu" widens the features a slice of pixels at a time, each pass; here 1350 pixels make one slice, and in
    # "cpu in ragged slices" 14 slices, the last one short. "split" is what a GPU runs (bf16 features kept, the
    # fp32 gradient of the Gram entering bf16 products as two bf16 parts); here its one CUDA-only call, the
    # bf16 x bf16 -> fp32 product, is computed by widening instead.
    if form == "split":
        monkeypatch.setattr(losses, "MIXED_PRODUCT_DEVICES", ("cuda", "cpu"))
    if form == "cpu in ragged slices":
        monkeypatch.setattr(losses, "CPU_PIXELS_PER_SLICE", 97)
    generator = torch.Generator().manual_seed(0)
    shape = (2, 64, 30, 45)
    features = (torch.randn(shape, generator=generator) * 50).relu().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    target = gram_matrices((torch.randn(shape, generator=generator) * 50).relu())
    exact = features.double().requires_grad_(True)
    exact_gram = torch.bmm(exact.flatten(2), exact.flatten(2).transpose(1, 2)) / (64 * 30 * 45)
    (exact_gram - target.double()).square().sum().backward()
    # What this replaces: autograd through the fp32 Gram of the widened features (two products, then a rounding to bf16).
    widened = features.clone().requires_grad_(True)
    flat = widened.flatten(2).float()
    (torch.bmm(flat, flat.transpose(1, 2)) / (64 * 30 * 45) - target).square().sum().backward()
    ours = features.clone().requires_grad_(True)

    gram = gram_matrices(ours)
    (gram - target).square().sum().backward()

    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram.double(), exact_gram.detach(), rtol=1e-5, atol=1e-3)
    assert ours.grad.dtype == torch.bfloat16
    # The gradient comes back in the features' own layout, channels-last, so nothing converts it on its way down.
    assert ours.grad.is_contiguous(memory_format=torch.channels_last)
    # About as near the exact gradient rounded to bf16 as autograd's: measured, in parts of the gradient's norm,
    # autograd 3.8e-5, cpu (either) 3.8e-5, split 8.8e-5; with the Gram's gradient rounded to bf16 (no second part) 1.7e-3.
    rounded = exact.grad.to(torch.bfloat16).double()
    scale = exact.grad.norm()
    autograd_error = float((widened.grad.double() - rounded).norm() / scale)
    error = float((ours.grad.double() - rounded).norm() / scale)
    assert error <= 3 * autograd_error, (error, autograd_error)


def test_bf16_weights_give_the_features_and_gradients_of_autocasting_the_fp32_ones(vgg16_random):
    params = resolve_params({})
    backbone = Backbone("vgg16", vgg16_random, get_convention("caffe"), params.layers)
    image = (torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1)) * 255 - 120).contiguous(memory_format=torch.channels_last)
    found = {}
    for casts in ("autocast casts the weights", "bf16 copy"):
        if casts == "autocast casts the weights":
            backbone._bf16_features = lambda: backbone.features  # the instance's, in front of the method
        else:
            del backbone._bf16_features
        pixels = image.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            features = backbone(pixels, params.layers)
        sum(f.float().square().mean() for f in features.values()).backward()
        found[casts] = [f.detach() for f in features.values()], pixels.grad

    (plain, plain_grad), (copied, copied_grad) = found.values()
    assert all(f.dtype == torch.bfloat16 for f in copied)
    assert all(torch.equal(a, b) for a, b in zip(plain, copied)) and torch.equal(plain_grad, copied_grad)
    # The copy is no part of the model: its state dict and modules are the fp32 VGG's alone.
    assert all(value.dtype == torch.float32 for value in backbone.state_dict().values())
    assert not any(module.weight.dtype == torch.bfloat16 for module in backbone.modules() if isinstance(module, torch.nn.Conv2d))


def test_a_graphed_adams_saved_state_is_a_plain_adams_that_a_cpu_run_loads():
    # A GPU's graphed Adam keeps its learning rate in a device tensor and runs fused and capturable; its saved state
    # must name none of that, or a CPU resuming the job would look for a GPU.
    image = torch.zeros(1, 3, 4, 4, requires_grad=True)
    plain = torch.optim.Adam([image], lr=0.3)
    image.grad = torch.ones_like(image)
    plain.step()
    state = plain.state_dict()
    state["param_groups"][0].update(lr=torch.tensor(0.3), capturable=True, fused=True)

    portable = portable_optimizer_state(state)

    group = portable["param_groups"][0]
    assert group["lr"] == pytest.approx(0.3) and not isinstance(group["lr"], torch.Tensor)
    assert not group["capturable"] and group["fused"] is None
    resumed = torch.optim.Adam([image], lr=0.3)
    resumed.load_state_dict(portable)
    resumed.step()
    assert torch.isfinite(image).all()


def test_style_loss_gradient_reaches_bf16_features_in_bf16():
    features = torch.randn(1, 4, 8, 8).to(torch.bfloat16).requires_grad_(True)
    target = gram_matrices(torch.randn(1, 4, 8, 8))

    style_losses(features, target).sum().backward()

    assert features.grad.dtype == torch.bfloat16 and torch.isfinite(features.grad.float()).all()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.mark.slow
def test_bf16_tracks_fp32_checkpoint_by_checkpoint_on_the_real_weights(caffe_weights, rainier, autumn_oak):
    # A small picture where the CPU has native bf16 (deepest layers 4x6 pixels; 150x225 took 161 s of `make test`, 100x150
    # at 100 iterations 90 s): ten checkpoints, four iterations apart. Measured at 64x96 on an AMX CPU: totals within
    # 0.41% at every checkpoint, PSNR 27.3 dB, the style loss down to 0.17 of its first (at 100x150 and 100 iterations:
    # 0.73%, 23.6 dB, 0.07). Where the CPU emulates bf16 (about 20x slower than fp32, 1.5 s an iteration at 48x72 on an
    # AVX2-only AMD EPYC), a thumbnail for half as long, ten checkpoints two apart: on that CPU within 1.03% at every
    # checkpoint, 32.4 dB, the style loss down to 0.28 of its first.
    values = (
        {"size": [64, 96], "iterations": 40, "checkpoint_every": 4}
        if native_bf16("cpu")
        else {"size": [48, 72], "iterations": 20, "checkpoint_every": 2}
    )
    backbone = build_backbone(caffe_weights, resolve_params(values))
    runs = {}
    for precision in ("fp32", "bf16"):
        checkpoints = []
        result = transfer(
            rainier, autumn_oak, resolve_params({**values, "precision": precision}), backbone=backbone, on_checkpoint=checkpoints.append
        )
        runs[precision] = result, checkpoints

    (fp32, fp32_checkpoints), (bf16, bf16_checkpoints) = runs["fp32"], runs["bf16"]
    assert len(fp32_checkpoints) == len(bf16_checkpoints) == 10
    for exact, fast in zip(fp32_checkpoints, bf16_checkpoints):
        assert math.isfinite(fast.total)
        assert fast.total == pytest.approx(exact.total, rel=0.02), exact.iteration
    # The optimisation is chaotic, so the two pictures part a little; they must still look alike.
    assert psnr(bf16.tensor, fp32.tensor) >= 20
    assert bf16_checkpoints[-1].style < 0.5 * bf16_checkpoints[0].style


def forward_and_backward_at_2048_pixels(caffe_weights, style_layers: tuple[str, ...], content_layers: tuple[str, ...]) -> None:
    """Run the loss terms, their gradient and the Gram matrices of a 2048 x 2048 picture in bf16; check they are finite."""
    params = resolve_params(
        {"size": [2048, 2048], "precision": "bf16", "style_layers": list(style_layers), "content_layers": list(content_layers)}
    )
    backbone = Backbone("vgg16", caffe_weights.state_dict, caffe_weights.convention, params.layers)
    objective = Objective(params, backbone, "bf16", torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    # A bright, busy picture: large activations everywhere.
    picture = torch.rand(1, 3, 2048, 2048, generator=generator)
    objective.set_targets([picture], [objective.style_targets(picture.flip(-1))])
    image = torch.rand(1, 3, 2048, 2048, generator=generator).requires_grad_(True)

    content, style, tv, total = objective(image)
    total.sum().backward()

    gradient = image.grad
    assert gradient is not None, "backward() filled no gradient"
    for name, values in {"content": content, "style": style, "tv": tv, "total": total, "gradient": gradient}.items():
        assert torch.isfinite(values).all(), name
    for grams in objective.style_grams:
        assert torch.isfinite(grams).all() and grams.abs().max() > 0
    assert np.isfinite(float(total.sum().detach()))


@pytest.mark.slow
def test_the_first_layers_gram_and_its_gradient_stay_finite_in_bf16_at_2048_pixels(caffe_weights):
    """The first layer's Gram sums run over the most pixels (4.2 million at 2048 x 2048), the overflow risk this guards.

    Its bf16 features, the Gram's fp32 sums and the gradient back through them to the picture, on the real weights
    (their activations' size is the point); the whole network at this size is in the full tier.
    """
    params = resolve_params({"size": [2048, 2048], "precision": "bf16", "style_layers": ["relu1_1"], "content_layers": ["relu1_1"]})
    backbone = Backbone("vgg16", caffe_weights.state_dict, caffe_weights.convention, params.layers)
    objective = Objective(params, backbone, "bf16", torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    # A bright, busy picture: large activations everywhere.
    target = objective.style_targets(torch.rand(1, 3, 2048, 2048, generator=generator))
    image = torch.rand(1, 3, 2048, 2048, generator=generator).requires_grad_(True)

    with network_precision("bf16", torch.device("cpu")):
        features = backbone(objective.network_input(image, from_pixels=True), ["relu1_1"])["relu1_1"]
    gram = gram_matrices(features)
    loss = style_losses(features, target.grams[0][None])
    loss.sum().backward()

    assert features.dtype == torch.bfloat16 and features.shape[-2:] == (2048, 2048)
    for name, values in {"target": target.grams[0], "gram": gram, "loss": loss, "gradient": image.grad}.items():
        assert torch.isfinite(values).all() and values.abs().max() > 0, name


@pytest.mark.slow
@pytest.mark.full
@pytest.mark.skipif(
    not native_bf16("cpu"),
    reason="bf16 is emulated on this CPU, many times slower: the first layer's test "
    "(test_the_first_layers_gram_and_its_gradient_stay_finite_in_bf16_at_2048_pixels) guards it here",
)
def test_nothing_overflows_in_bf16_at_2048_pixels_through_the_whole_network(caffe_weights):
    """The deeper layers' larger activations too: every preset layer's Gram, forward and backward, at 2048 x 2048 (about 10 GB)."""
    forward_and_backward_at_2048_pixels(caffe_weights, ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), ("relu4_2",))
