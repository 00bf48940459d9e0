"""TransformerNet and the VGG16 loss network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from stylepipe.export import check_onnx, export_onnx
from stylepipe.models.transformer import InstanceNorm2d, TransformerNet, load_transformer
from stylepipe.models.vgg import LAYER_INDICES, LossNetwork, random_state_dict


# --- an independent copy of pytorch/examples fast_neural_style/neural_style/transformer_net.py
class RefConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class RefResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = RefConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = RefConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x):
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        return out + residual


class RefUpsampleConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, upsample=None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        if self.upsample:
            x = nn.functional.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x))


class RefTransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = RefConvLayer(3, 32, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = RefConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = RefConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        self.res1 = RefResidualBlock(128)
        self.res2 = RefResidualBlock(128)
        self.res3 = RefResidualBlock(128)
        self.res4 = RefResidualBlock(128)
        self.res5 = RefResidualBlock(128)
        self.deconv1 = RefUpsampleConvLayer(128, 64, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = RefUpsampleConvLayer(64, 32, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = RefConvLayer(32, 3, kernel_size=9, stride=1)
        self.relu = nn.ReLU()

    def forward(self, X):
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.res3(y)
        y = self.res4(y)
        y = self.res5(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def _seeded_net(seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    return TransformerNet().eval()


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (29, 30), (5, 7), (1, 2)])
def test_output_keeps_input_size(size):
    x = torch.rand(2, 3, *size) * 255
    with torch.no_grad():
        y = _seeded_net()(x)
    assert y.shape == x.shape


def test_activations_stay_bf16_under_cpu_autocast():
    # CPU autocast would run reflection padding in float32: two casts per layer
    net, seen = _seeded_net(), []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.rand(1, 3, 16, 16) * 255)
    # float32 only for the input image itself
    assert seen == [torch.float32] + [torch.bfloat16] * 15


@pytest.mark.parametrize("p", [1, 4])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_reflection_padding_gradient_matches_pytorch(p, memory_format):
    from stylepipe.models.transformer import reflection_pad

    pad = nn.ReflectionPad2d(p)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64).contiguous(memory_format=memory_format)
    weight = torch.randn(2, 3, 9 + 2 * p, 11 + 2 * p, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    (reflection_pad(pad, ours) * weight).sum().backward()
    (pad(theirs) * weight).sum().backward()
    torch.testing.assert_close(reflection_pad(pad, ours), pad(theirs))
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_our_weights_load_into_pytorch_examples_net():
    ours = _seeded_net()
    ref = RefTransformerNet().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(1, 3, 40, 36) * 255  # multiple of 4: the reference net keeps the size only then
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_pytorch_examples_weights_with_legacy_keys_load(tmp_path):
    torch.manual_seed(1)
    ref = RefTransformerNet().eval()
    state = ref.state_dict()
    # what the published .pth files hold: InstanceNorm buffers of PyTorch < 0.4
    for name in ["in1", "in2", "in3", "in4", "in5", "res1.in1", "res3.in2"]:
        channels = state[f"{name}.weight"].shape[0]
        state[f"{name}.running_mean"] = torch.zeros(channels)
        state[f"{name}.running_var"] = torch.ones(channels)
    state["in1.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "candy.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError):
        TransformerNet().load_state_dict(state, strict=True)  # the keys really are unexpected
    net = load_transformer(path)
    x = torch.rand(1, 3, 32, 44) * 255
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x))


def test_missing_model_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_transformer(tmp_path / "nothere.pth")


@pytest.mark.parametrize("content", [b"hello world\n", b"junk\n"])
def test_a_file_that_is_not_pytorch_s_says_so(tmp_path, content):
    (tmp_path / "m.pth").write_bytes(content)
    with pytest.raises(ValueError, match=r"m.pth: not a TransformerNet state_dict \(not a PyTorch file: corrupt or"):
        load_transformer(tmp_path / "m.pth")


def test_weights_that_are_not_numbers_are_refused_naming_the_file(tmp_path, capsys):
    """NaN weights (a diverged training) would stylize every image black, and exit 0."""
    from stylepipe import cli

    state = TransformerNet().state_dict()
    state["conv1.conv2d.weight"][0, 0, 0, 0] = float("nan")
    state["res1.conv1.conv2d.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=r"nan.pth: 2 of its weights are NaN or infinite"):
        load_transformer(tmp_path / "nan.pth")
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    assert cli.main(["stylize", "--model", str(tmp_path / "nan.pth"), "--output", str(tmp_path / "out.png"),
                     str(tmp_path / "in.png")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "out.png").exists()


def test_onnx_export_matches_pytorch_with_onnxruntime(tmp_path):
    import onnxruntime as ort

    net = _seeded_net(3)
    path = tmp_path / "model.onnx"
    export_onnx(net, path)  # verifies itself; check again here at other sizes and batch sizes
    assert check_onnx(net, path, size=(36, 60)) < 0.05
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # any size, as TransformerNet.forward: multiples of 4, odd sizes (reflected), sizes under 8 px and
    # too small to reflect on one side (then both sides replicate, as forward() does)
    for size in [(24, 16), (51, 77), (61, 30), (5, 9), (7, 3), (3, 7), (1, 1), (2, 200)]:
        x = torch.rand(3, 3, *size) * 255
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), net(x), atol=0.05, rtol=1e-4, msg=f"{size}")


def test_onnx_example_in_the_docs_stylizes_as_stylepipe_does(tmp_path, monkeypatch):
    """docs/training.md shows the .onnx file used with onnxruntime alone: that block, run as it is,
    gives the picture `stylepipe stylize` gives with the same model, at the photograph's odd size."""
    import re

    from stylepipe.stylize import stylize_files

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", docs.split("needs nothing of stylepipe")[1], re.S)[:1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/models").mkdir(parents=True)
    net = _seeded_net(5)
    with torch.no_grad():  # an output spread over 0-255 like a trained network's, so pixels can differ
        net.deconv3.conv2d.weight.mul_(40)
        net.deconv3.conv2d.bias.add_(128)
    export_onnx(net, tmp_path / "results/models/candy.onnx")
    Image.fromarray(astronaut()[::4, ::4][:101, :75]).save(tmp_path / "photo.jpg", quality=95)
    exec(compile(block, "docs/training.md", "exec"), {})
    ours = stylize_files(tmp_path / "results/models/candy.onnx", [tmp_path / "photo.jpg"], tmp_path / "out",
                         device="cpu", progress=False)
    theirs = np.asarray(Image.open(tmp_path / "photo-candy.png"))
    assert theirs.shape == (101, 75, 3) and theirs.std() > 5
    assert np.abs(theirs.astype(int) - np.asarray(Image.open(ours[0])).astype(int)).max() <= 1


def test_onnx_graph_keeps_instance_normalization(tmp_path):
    import onnx

    path = tmp_path / "model.onnx"
    export_onnx(_seeded_net(), path, check=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("InstanceNormalization") == 15
    assert "GroupNormalization" not in ops


def test_channels_last_instance_norm_equals_contiguous():
    # a CPU channels_last input goes through group_norm (one channel per group), others through instance_norm
    torch.manual_seed(0)
    norm = InstanceNorm2d(16, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 16, 13, 18) * 4 + 2
    expected = nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    got = norm(x_cl)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    # gradients agree too (training may run the network channels_last)
    grads = []
    for inp in (x, x_cl):
        inp = inp.detach().requires_grad_()
        norm.zero_grad()
        (norm(inp) * torch.linspace(-1, 1, 18)).sum().backward()
        grads.append((inp.grad, norm.weight.grad.clone(), norm.bias.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_channels_last_network_equals_contiguous(monkeypatch):
    net, x = _seeded_net(), torch.rand(2, 3, 30, 41) * 255
    with torch.no_grad():
        expected = net(x)
        calls, group_norm = [], nn.functional.group_norm
        monkeypatch.setattr(nn.functional, "group_norm", lambda *a, **k: calls.append(1) or group_norm(*a, **k))
        got = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert len(calls) == 15  # every norm stayed channels_last
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_random_state_dict_is_seeded_with_torchvision_keys():
    a, b, c = random_state_dict(7), random_state_dict(7), random_state_dict(8)
    expected = {f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21) for p in ("weight", "bias")}
    assert set(a) == expected
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    state = torch.random.get_rng_state()
    random_state_dict(7)
    assert torch.equal(state, torch.random.get_rng_state()), "must not disturb the global RNG"


def test_vgg16_layers_and_random_weights_are_torchvision_s():
    # the loss network is built without importing torchvision: it must stay torchvision's VGG16,
    # and the seeded random weights (offline runs) the ones torchvision's builder draws
    from stylepipe.models.vgg import _vgg16_layers

    assert repr(_vgg16_layers()) == repr(make_layers(cfgs["D"], batch_norm=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        features = make_layers(cfgs["D"], batch_norm=False)[:23]
        for module in features.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                torch.nn.init.constant_(module.bias, 0)
    ours = random_state_dict(11)
    theirs = {f"features.{k}": v for k, v in features.state_dict().items()}
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_loss_network_matches_torchvision_features(tmp_path):
    state = random_state_dict(3)
    full = dict(state)
    full["features.24.weight"] = torch.zeros(1)  # beyond relu4_3: ignored
    full["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision file: ignored
    path = tmp_path / "vgg16.pth"
    torch.save(full, path)
    net = LossNetwork.from_file(path, ["relu4_3", "relu1_2", "relu2_2", "relu3_3"])
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training, "the loss network stays in eval mode"

    features = make_layers(cfgs["D"])[:23]  # the layer list torchvision's vgg16() is built from
    features.load_state_dict({k[len("features."):]: v for k, v in state.items()})
    x = torch.rand(2, 3, 32, 32) * 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x / 255.0 - mean) / std  # pytorch/examples utils.normalize_batch
    expected = {}
    for i, layer in enumerate(features):
        h = layer(h)
        for name, index in LAYER_INDICES.items():
            if index == i:
                expected[name] = h
    with torch.no_grad():
        got = net(x)
    assert list(got) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_missing_loss_network_file_says_how_to_fetch_it(tmp_path):
    path = tmp_path / "data" / "models" / "vgg16_features.pth"
    with pytest.raises(FileNotFoundError) as info:
        LossNetwork.from_file(path, ["relu2_2"])
    message = str(info.value)
    assert str(path) in message
    assert "stylepipe fetch loss-network" in message and "snakemake" in message


def test_wrong_loss_network_file_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="other.pth"):
        LossNetwork.from_file(path, ["relu2_2"])


@pytest.fixture
def not_models(tmp_path):
    """Files a user may pass where a network's weights belong."""
    torch.save(_seeded_net().state_dict(), tmp_path / "real.pth")
    data = (tmp_path / "real.pth").read_bytes()
    files = {
        "text.pth": ("x\n", "not a PyTorch weights file"),
        "empty.pth": (b"", "empty"),
        "cut.pth": (data[: len(data) // 2], "truncated"),
    }
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    return tmp_path, {name: reason for name, (_, reason) in files.items()} | {"tensor.pth": "holds a Tensor"}


def test_files_that_are_not_transformer_weights_are_named(not_models, tmp_path):
    root, cases = not_models
    torch.save(random_state_dict(0), root / "vgg.pth")
    cases = cases | {"vgg.pth": "62 of its 62 weights missing"}
    state = _seeded_net().state_dict()
    state["conv1.conv2d.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, root / "shape.pth")
    cases["shape.pth"] = "wrong shape or type for conv1.conv2d.weight"
    torch.save(_seeded_net(), root / "whole.pth")  # torch.save(net) rather than net.state_dict()
    cases["whole.pth"] = "a whole pickled model (if you trust its source, save its .state_dict() instead)"
    for name, reason in cases.items():
        with pytest.raises(ValueError) as info:
            load_transformer(root / name)
        message = str(info.value)
        assert message.startswith(f"{root / name}: not a TransformerNet state_dict") and reason in message, message
        assert "weights_only" not in message and "pass the right file" in message


def test_files_that_are_not_vgg_weights_are_named(not_models):
    root, cases = not_models
    state = random_state_dict(0)
    del state["features.21.bias"]
    torch.save(state, root / "partial.pth")
    cases = cases | {"partial.pth": "missing features.21.bias"}
    for name, reason in cases.items():
        with pytest.raises(ValueError) as info:
            LossNetwork.from_file(root / name, ["relu2_2"])
        message = str(info.value)
        assert message.startswith(f"{root / name}: ") and "VGG16 state_dict" in message and reason in message, message
        assert "weights_only" not in message and "stylepipe fetch loss-network" in message


def test_onnx_export_leaves_the_network_as_it_was(tmp_path):
    net = _seeded_net(4).to(torch.bfloat16).train()
    export_onnx(net, tmp_path / "model.onnx")  # checked against a float32 copy
    assert net.training and all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert check_onnx(_seeded_net(4).to(torch.bfloat16).float().eval(), tmp_path / "model.onnx") < 0.05
