"""Model builders: output shapes, the study's layer sizes, freezing and local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import ResNet

from ml.errors import ModelError
from ml.models import ARCHITECTURES, SeriesModel, build_model, train_mode


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _forward(name: str, size: int, batch: int = 1, in_channels: int | None = None) -> torch.Tensor:
    spec = ARCHITECTURES[name]
    channels = spec.in_channels if in_channels is None else in_channels
    model = build_model(name, in_channels=channels, input_size=size).eval()
    shape = (batch, 3, channels, size, size) if spec.kind == "sequence" else (batch, channels, size, size)
    with torch.inference_mode():
        return model(torch.rand(shape))


@pytest.mark.parametrize(
    ("name", "size"),
    [("vanilla", 64), ("alexnet", 195), ("resnet18", 64), ("resnet50", 64),
     ("densenet121", 64), ("inception_v3", 75), ("ichnet", 32)],
)  # fmt: skip
def test_slice_models_give_one_logit_per_label(name: str, size: int) -> None:
    out = _forward(name, size)
    assert out.shape == (1, 6)
    assert torch.isfinite(out).all()


def test_sequence_model_gives_logits_per_slice() -> None:
    assert _forward("ichnet_seq", 32, batch=2).shape == (2, 3, 6)


def test_every_architecture_is_described() -> None:
    assert set(ARCHITECTURES) == {"vanilla", "alexnet", "resnet18", "resnet50", "densenet121",
                                  "inception_v3", "ichnet", "ichnet_seq"}  # fmt: skip
    assert ARCHITECTURES["inception_v3"].input_size == 299
    assert ARCHITECTURES["ichnet"].in_channels == 3 * (2 * ARCHITECTURES["ichnet"].context + 1)
    assert {a.kind for a in ARCHITECTURES.values()} == {"slice", "sequence"}


def test_other_label_and_channel_counts() -> None:
    model = build_model("resnet18", num_labels=2, in_channels=9, input_size=64).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 9, 64, 64)).shape == (1, 2)


def test_vanilla_has_the_keras_parameter_count() -> None:
    model = build_model("vanilla")  # 512 x 512 x 3
    conv = 5 * 5 * 3 * 32 + 32
    flatten = 32 * 125 * 125  # 512 -> conv 5/2 -> 254 -> pool 5/2 -> 125
    dense = flatten * 6 + 6
    assert sum(p.numel() for p in model.parameters()) == conv + dense


def test_study_alexnet_layers_at_512() -> None:
    with torch.device("meta"):  # shapes only: the 512 model holds 129 M parameters
        model = build_model("alexnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4)
    # 512 -> 126 -> pool 62 -> 58 -> pool 28 -> 26, 24, 22 -> pool 10
    assert [d.out_features for d in dense] == [4096, 4096, 1000, 6]
    assert dense[0].in_features == 256 * 10 * 10
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 6


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="name"):
        build_model("lenet")
    with pytest.raises(ValueError, match="input_size"):
        build_model("alexnet", input_size=128)
    with pytest.raises(ValueError, match="num_labels"):
        build_model("ichnet", num_labels=0)


@pytest.mark.parametrize(("name", "head"), [("resnet18", {"fc"}), ("ichnet", {"fc"}),
                                            ("ichnet_seq", {"gru", "seq_fc"}), ("vanilla", {"classifier"})])  # fmt: skip
def test_freeze_backbone_trains_the_head_only(name: str, head: set[str]) -> None:
    model = build_model(name, input_size=64, freeze_backbone=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and {n.split(".")[0] for n in trainable} == head
    assert len(trainable) < len(list(model.parameters()))
    default = build_model(name, input_size=64)
    assert all(p.requires_grad for p in default.parameters())


def test_train_mode_keeps_frozen_batchnorm_still() -> None:
    model = build_model("ichnet", freeze_backbone=True)
    train_mode(model)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert model.get_submodule("fc").training
    running_mean = norms[0].running_mean
    assert running_mean is not None
    before = running_mean.clone()
    model(torch.rand(2, 9, 32, 32))
    assert torch.equal(running_mean, before)


def test_pretrained_loads_a_local_state_dict(tmp_path: Path) -> None:
    source = build_model("resnet18", input_size=64)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    loaded = build_model("resnet18", input_size=64, pretrained=path)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_pretrained_imagenet_style_file_adapts_input_and_head(tmp_path: Path) -> None:
    imagenet = build_model("resnet18", num_labels=1000, in_channels=3)
    path = tmp_path / "imagenet.pt"
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet18", in_channels=9, pretrained=path)
    assert isinstance(model, ResNet) and isinstance(imagenet, ResNet)
    # the 3-channel stem kernel tiled over 9 channels and scaled by 3/9 keeps its response
    assert torch.allclose(model.conv1.weight.sum(dim=1), imagenet.conv1.weight.sum(dim=1), atol=1e-6)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert model.fc.out_features == 6  # the 1000-class head is not loaded


def test_sequence_model_starts_from_a_slice_model(tmp_path: Path) -> None:
    slice_model = build_model("ichnet").eval()
    path = tmp_path / "ichnet.pt"
    torch.save(slice_model.state_dict(), path)
    series_model = build_model("ichnet_seq", pretrained=path).eval()
    x = torch.rand(1, 4, 9, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(series_model(x)[0], slice_model(x[0]), atol=1e-5)


def test_bad_weights_files_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        build_model("ichnet", pretrained=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        build_model("ichnet", pretrained=garbage)
    other = tmp_path / "vanilla.pt"
    torch.save(build_model("vanilla", input_size=64).state_dict(), other)
    with pytest.raises(ModelError, match="keys not in ichnet"):
        build_model("ichnet", pretrained=other)


def test_series_model_ignores_padding() -> None:
    model = build_model("ichnet_seq").eval()
    assert isinstance(model, SeriesModel)
    short, long = torch.rand(3, 9, 32, 32), torch.rand(5, 9, 32, 32)
    x = torch.zeros(2, 5, 9, 32, 32)
    x[0, :3], x[1] = short, long
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    with torch.no_grad():
        torch.nn.init.normal_(model.seq_fc.weight)  # make the GRU path count
        batched = model(x, mask)
        assert torch.allclose(batched[0, :3], model(short[None])[0], atol=1e-5)
        assert torch.allclose(batched[1], model(long[None])[0], atol=1e-5)
        with pytest.raises(ValueError, match="mask"):
            model(x, torch.tensor([[True, False, True, False, False], [True] * 5]))
