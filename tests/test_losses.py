"""Losses against an independent NumPy computation (pytorch/examples scaling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylepipe.losses import content_loss, gram_matrix, style_loss, tv_loss


def np_gram(f: np.ndarray) -> np.ndarray:
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w).astype(np.float64)
    return np.einsum("bik,bjk->bij", flat, flat) / (c * h * w)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    make = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "x": {"relu1_2": make(2, 4, 6, 5), "relu2_2": make(2, 8, 3, 3)},
        "y": {"relu1_2": make(2, 4, 6, 5), "relu2_2": make(2, 8, 3, 3)},
        "style": {"relu1_2": make(1, 4, 7, 9), "relu2_2": make(1, 8, 4, 4)},
    }


def t(d):
    return {k: torch.from_numpy(v) for k, v in d.items()}


def test_gram_matrix(feats):
    f = feats["x"]["relu1_2"]
    got = gram_matrix(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(got, np_gram(f), rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 4, 4)


def test_gram_matrix_of_channels_last_features(feats):
    # the loss network runs channels_last: its Gram takes another route, same numbers
    f = torch.from_numpy(feats["x"]["relu1_2"])
    got = gram_matrix(f.contiguous(memory_format=torch.channels_last)).numpy()
    np.testing.assert_allclose(got, np_gram(feats["x"]["relu1_2"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gram_matrix_gradient_matches_autograd(memory_format):
    # the Gram's backward is written by hand: check it against float64 autograd of F Fᵀ
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    target = torch.randn(1, 5, 5, dtype=torch.float64)
    reference = x.clone().requires_grad_()
    flat = reference.reshape(2, 5, 12)
    ((flat @ flat.transpose(1, 2) / 60 - target) ** 2).mean().backward()
    ours = x.float().contiguous(memory_format=memory_format).requires_grad_()
    ((gram_matrix(ours) - target.float()) ** 2).mean().backward()
    np.testing.assert_allclose(ours.grad.double().numpy(), reference.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_gram_matrix_dtype_and_accuracy_under_autocast():
    # bf16-mixed: bf16 features give a bf16 Gram (accumulated in float32, rounded once);
    # float32 features stay float32 whatever the autocast; float16 features give float32
    torch.manual_seed(0)
    f = torch.relu(torch.randn(2, 16, 24, 24)).bfloat16().contiguous(memory_format=torch.channels_last)
    exact = np_gram(f.double().numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, fp32 = gram_matrix(f), gram_matrix(f.float())
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    np.testing.assert_allclose(bf16.double().numpy(), exact, rtol=2.0**-8, atol=0)
    np.testing.assert_allclose(fp32.numpy(), exact, rtol=1e-5, atol=1e-7)


def test_gram_matrix_of_float16_features_does_not_overflow():
    # F Fᵀ sums over H·W positions before the normalisation: here 128·128 · 2² = 65536,
    # beyond float16's 65504, although the normalised Gram is 2
    features = torch.full((1, 2, 128, 128), 2.0, dtype=torch.float16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        gram = gram_matrix(features)
        loss = style_loss({"a": features}, {"a": torch.zeros(1, 2, 2)}, ["a"])
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, torch.full((1, 2, 2), 2.0))
    loss.backward()
    assert loss.item() == 4.0 and features.grad.dtype == torch.float16 and features.grad.isfinite().all()


def test_content_loss_is_mean_squared_error(feats):
    x, y = feats["x"], feats["y"]
    expected = np.mean((x["relu2_2"].astype(np.float64) - y["relu2_2"]) ** 2)
    got = content_loss(t(x), t(y), ["relu2_2"]).item()
    assert got == pytest.approx(expected, rel=1e-5)
    both = np.mean([np.mean((x[k].astype(np.float64) - y[k]) ** 2) for k in x])
    assert content_loss(t(x), t(y), ["relu1_2", "relu2_2"]).item() == pytest.approx(both, rel=1e-5)


def test_style_loss_weighted_over_layers(feats):
    x, style = feats["x"], feats["style"]
    targets = {k: gram_matrix(torch.from_numpy(v)) for k, v in style.items()}
    weights = {"relu1_2": 0.25, "relu2_2": 3.0}
    expected = 0.0
    for k, w in weights.items():
        g, gs = np_gram(x[k]), np_gram(style[k])  # target broadcast over the batch
        expected += w * np.mean((g - gs) ** 2)  # the second averaging pytorch/examples does
    got = style_loss(t(x), targets, list(weights), list(weights.values())).item()
    assert got == pytest.approx(expected, rel=1e-4)


def test_style_loss_needs_one_weight_per_layer(feats):
    targets = {k: gram_matrix(torch.from_numpy(v)) for k, v in feats["style"].items()}
    with pytest.raises(ValueError, match="weights"):
        style_loss(t(feats["x"]), targets, ["relu1_2", "relu2_2"], [1.0])


def test_tv_loss():
    img = np.random.default_rng(1).uniform(0, 255, (2, 3, 5, 7))
    expected = np.abs(np.diff(img, axis=2)).mean() + np.abs(np.diff(img, axis=3)).mean()
    assert tv_loss(torch.from_numpy(img)).item() == pytest.approx(expected, rel=1e-6)
    assert tv_loss(torch.full((1, 3, 4, 4), 9.0)).item() == 0.0


def test_losses_are_differentiable(feats):
    x = {k: torch.from_numpy(v).requires_grad_() for k, v in feats["x"].items()}
    targets = {k: gram_matrix(torch.from_numpy(v)) for k, v in feats["style"].items()}
    loss = style_loss(x, targets, ["relu1_2"]) + content_loss(x, t(feats["y"]), ["relu2_2"])
    loss.backward()
    assert x["relu1_2"].grad.abs().sum() > 0 and x["relu2_2"].grad.abs().sum() > 0
