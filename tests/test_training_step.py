"""A training step against an independent float32 pytorch/examples step; float16, bf16-true, determinism."""

from __future__ import annotations

import re
import signal

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.vgg import cfgs, make_layers

from stylepipe.models.vgg import random_state_dict
from stylepipe.module import StyleTransferModule
from test_train import assert_identical, setup, train, train_interrupted, variant  # noqa: F401 (setup: a fixture)

VGG_STATE = random_state_dict(0)
VGG = {k[len("features."):]: v for k, v in VGG_STATE.items()}


def style_and_content(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 24, 40, generator=gen) * 255, (torch.rand(2, 3, size, size, generator=gen) * 255).round()


def transformer_gradient(module: StyleTransferModule) -> torch.Tensor:
    gradient = torch.cat([p.grad.flatten() for p in module.transformer.parameters()])
    module.zero_grad(set_to_none=True)
    return gradient


# --- pytorch/examples fast_neural_style (vgg.py, utils.py, the loop in neural_style.py), float32
def examples_vgg() -> list[torch.nn.Sequential]:
    features = make_layers(cfgs["D"])[:23]  # torchvision's vgg16().features, up to relu4_3
    features.load_state_dict({k[len("features."):]: v for k, v in VGG_STATE.items()})
    features.requires_grad_(False)
    return [features[0:4], features[4:9], features[9:16], features[16:23]]  # relu1_2, relu2_2, relu3_3, relu4_3


def examples_features(slices, x):
    out = []
    for block in slices:
        x = block(x)
        out.append(x)
    return out


def normalize_batch(batch):
    mean = batch.new_tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = batch.new_tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    return (batch.div(255.0) - mean) / std


def examples_gram(y):
    b, ch, h, w = y.size()
    features = y.view(b, ch, w * h)
    return features.bmm(features.transpose(1, 2)) / (ch * h * w)


def examples_losses(transformer, style, x, content_weight, style_weight, tv_weight):
    vgg = examples_vgg()
    gram_style = [examples_gram(f) for f in examples_features(vgg, normalize_batch(style.repeat(len(x), 1, 1, 1)))]
    y = transformer(x)
    features_y = examples_features(vgg, normalize_batch(y))
    features_x = examples_features(vgg, normalize_batch(x))
    content = content_weight * F.mse_loss(features_y[1], features_x[1])  # relu2_2
    style_loss = sum(F.mse_loss(examples_gram(f), g) for f, g in zip(features_y, gram_style))
    # total variation (Johnson et al.; not in pytorch/examples): mean absolute neighbour difference
    tv = tv_weight * ((y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., :, 1:] - y[..., :, :-1]).abs().mean())
    return {"content_loss": content, "style_loss": style_weight * style_loss, "tv_loss": tv,
            "total_loss": content + style_weight * style_loss + tv}


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_step_matches_pytorch_examples(channels_last):
    # the same loss values and TransformerNet gradient as pytorch/examples' method, its weights included
    style, images = style_and_content()
    torch.manual_seed(0)
    module = StyleTransferModule(style, VGG, tv_weight=1e-3, channels_last=channels_last)
    ours, _ = module.losses(images)
    ours["total_loss"].backward()
    ours_gradient = transformer_gradient(module)
    theirs = examples_losses(module.transformer, style, images, 1e5, 1e10, 1e-3)
    theirs["total_loss"].backward()
    theirs_gradient = transformer_gradient(module)
    assert all(ours[name] > 0 for name in theirs)
    for name in theirs:
        assert ours[name].item() == pytest.approx(theirs[name].item(), rel=1e-5), name
    # float32 rounding: each is about 4e-5 from a float64 step; a wrong scale or term would be O(1)
    assert ((ours_gradient - theirs_gradient).norm() / theirs_gradient.norm()).item() < 3e-4


def test_float16_step_with_grad_scaler_follows_float32():
    # 16-mixed on CUDA: float16 autocast, the VGG stored in float16, a GradScaler. The same on
    # the CPU: the written-out backwards (Gram, reflection padding) take scaled float16 gradients
    style, images = style_and_content(16)  # float16 convolutions are slow on a CPU
    module = StyleTransferModule(style, VGG, tv_weight=1e-3)
    expected_losses, _ = module.losses(images)
    expected_losses["total_loss"].backward()
    expected = transformer_gradient(module)
    module.cast_loss_network(torch.float16)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)  # about where a GradScaler settles for this loss
    with torch.autocast("cpu", dtype=torch.float16):
        losses, _ = module.losses(images)
    scaler.scale(losses["total_loss"]).backward()
    scaler.unscale_(torch.optim.Adam(module.transformer.parameters()))
    got = transformer_gradient(module)
    assert got.isfinite().all()
    # at 16 px mixed precision is coarse (bf16 autocast: 13 % here, 3 % at 32 px); a broken backward is O(1)
    assert ((got - expected).norm() / expected.norm()).item() < 0.1
    for name, value in losses.items():
        assert value.dtype == torch.float32 and value.item() == pytest.approx(expected_losses[name].item(), rel=2e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_loss_networks_normalisation_stays_exact_in_mixed_precision(dtype):
    """The VGG's weights go to the autocast dtype, its ImageNet mean and std do not: rounded to
    bfloat16 (123.675 → 123.5) they would shift every feature away from the style targets'."""
    from stylepipe.models.vgg import IMAGENET_MEAN, IMAGENET_STD

    style, _ = style_and_content(16)
    module = StyleTransferModule(style, VGG)
    module.cast_loss_network(dtype)
    module.cast_loss_network(dtype)  # setup() runs once per stage
    assert next(module.loss_network.parameters()).dtype == dtype
    assert torch.equal(module.loss_network.mean.flatten(), torch.tensor(IMAGENET_MEAN) * 255.0)
    assert torch.equal(module.loss_network.std.flatten(), torch.tensor(IMAGENET_STD) * 255.0)


# ops that torch.use_deterministic_algorithms(True) refuses on CUDA (its documented list), as ATen names;
# under Lightning's deterministic="warn" they would run, non-deterministically
NO_DETERMINISTIC_CUDA_KERNEL = re.compile(
    r"reflection_pad\dd_backward|upsample_(linear1d|bilinear2d|bicubic2d|trilinear3d)(_aa)?_backward"
    r"|adaptive_(avg|max)_pool\dd_backward|avg_pool3d_backward|fractional_max_pool|max_unpool|nll_loss"
    r"|ctc_loss|embedding_bag|^put_?$|histc|bincount|median|grid_sampler_\dd_backward|scatter_reduce"
)


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_training_step_has_no_op_without_a_deterministic_cuda_kernel():
    # the default configuration's step (bf16 autocast, channels_last VGG), forward, backward and Adam
    style, images = style_and_content()
    module = StyleTransferModule(style, VGG, tv_weight=1e-3, channels_last=True)
    module.cast_loss_network(torch.bfloat16)
    optimizer = torch.optim.Adam(module.transformer.parameters())
    with RecordOps() as ops:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses, _ = module.losses(images)
        losses["total_loss"].backward()
        optimizer.step()
    assert {"convolution_backward", "max_pool2d_with_indices_backward", "upsample_nearest2d_backward"} <= ops.names
    assert not {name for name in ops.names if NO_DETERMINISTIC_CUDA_KERNEL.search(name)}

    with RecordOps() as plain:  # what the pattern catches: PyTorch's own reflection padding's backward
        torch.nn.ReflectionPad2d(1)(torch.rand(1, 1, 4, 4, requires_grad=True)).sum().backward()
    assert any(NO_DETERMINISTIC_CUDA_KERNEL.search(name) for name in plain.names)


def test_bf16_true_trains():
    # precision bf16-true: Lightning converts the whole module to bfloat16; the uint8 batch must follow
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    style, images = style_and_content(16)
    module = StyleTransferModule(style, VGG)
    before = module.transformer.conv1.conv2d.weight.detach().clone()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-true", max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(images.to(torch.uint8), batch_size=2))
    weight = module.transformer.conv1.conv2d.weight
    assert trainer.global_step == 2 and weight.dtype == torch.bfloat16
    assert not torch.equal(weight.float(), before) and trainer.callback_metrics["train/total_loss"].isfinite()


@pytest.mark.slow
def test_bf16_mixed_run_with_a_schedule_resumes_bit_for_bit(setup):
    # the default precision and layout, with a cosine schedule: SIGTERM, then resume = uninterrupted
    values = dict(precision="bf16-mixed", channels_last=True, lr_schedule="cosine", log_every_n_steps=1)
    train(setup, "bf16-full", variant(setup, "bf16-full", **values))
    stopped = train_interrupted(setup, "bf16-cut", signal.SIGTERM, variant(setup, "bf16-cut", **values))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    train(setup, "bf16-cut", variant(setup, "bf16-cut", **values))
    assert_identical(setup / "bf16-full" / "waves.pth", setup / "bf16-cut" / "waves.pth")
    full, cut = ((setup / run / "curves.csv").read_text() for run in ("bf16-full", "bf16-cut"))
    assert full == cut and full.splitlines()[-1].endswith(",0")  # the cosine reaches 0 at the last step


def test_step_schedule_drops_the_rate_once_per_milestone_even_on_short_runs():
    """The module's own `lr_schedule: step` scheduler, stepped as Lightning steps it (every optimizer step):
    full rate first, a tenth from 2/3 of the run, a hundredth from 8/9, never both drops at once."""
    import pytorch_lightning as pl

    from stylepipe.module import step_milestones

    assert step_milestones(41_000) == [27_333, 36_444]
    module = StyleTransferModule(torch.full((1, 3, 16, 16), 128.0), VGG, lr=1.0, lr_schedule="step")
    for steps in [*range(1, 40), 300]:
        # max_steps alone sizes the schedule: Lightning's estimate needs no data then
        module.trainer = pl.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                                    enable_checkpointing=False, enable_model_summary=False)
        configured = module.configure_optimizers()
        optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
        assert configured["lr_scheduler"]["interval"] == "step"
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        milestones = step_milestones(steps)
        assert rates == pytest.approx([0.1 ** sum(step >= m for m in milestones) for step in range(steps)]), steps
        assert rates[0] == 1.0  # the first step trains at the full rate
        assert steps == 1 or min(rates) < 1.0, rates  # a short run drops the rate too
        ratios = [b / a for a, b in zip(rates, rates[1:])]
        assert all(r == 1.0 or r == pytest.approx(0.1) for r in ratios), (steps, rates)  # never 100x at once
