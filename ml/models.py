"""Model builders: the study's five networks, a ResNet-18 baseline and the fast triage models.

Every model outputs LOGITS, one per label in `ml.labels.LABELS` order. The study's last layer,
"Dense(6, activation='sigmoid')" trained with binary cross-entropy, becomes a linear layer whose
logits go through `BCEWithLogitsLoss` in training (numerically safer than sigmoid + log) and
through `torch.sigmoid` in inference.

Inputs: slice models take (N, C, H, W); sequence models take (B, T, C, H, W) and return
(B, T, num_labels), one output per slice. C = windows x (2 * context + 1): for 2.5D input the
channels are the windowed neighbour slices stacked offset-major (slice i-k, ..., i, ..., i+k,
each with all its windows); see `ml.inference.stack_context`.

Nothing is downloaded: torchvision builders get `weights=None`; `pretrained` is a local
state_dict file.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

from ml.errors import ModelError

logger = logging.getLogger(__name__)

Kind = Literal["slice", "sequence"]
_Builder = Callable[[int, int, int], nn.Module]  # (num_labels, in_channels, input_size)


@dataclass(frozen=True)
class Architecture:
    """What a caller must know to feed an architecture."""

    name: str
    input_size: int  # side of the square input it is meant for (after resize)
    min_input_size: int  # smallest side its layers accept
    kind: Kind  # "slice": (N, C, H, W) -> (N, L); "sequence": (B, T, C, H, W) -> (B, T, L)
    context: int  # default neighbour slices on each side stacked as channels (2.5D)
    in_channels: int  # default channels: 3 windows x (2 * context + 1)
    head: tuple[str, ...]  # top-level modules trained when the backbone is frozen
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("vanilla", 512, 13, "slice", 0, 3, ("classifier",),
                     "the study's network: conv 32@5x5/2, max-pool 5x5/2, dense"),
        Architecture("alexnet", 512, 195, "slice", 0, 3, ("fc",),
                     "the study's hand-coded AlexNet: 5 conv, 3 dense (4096, 4096, 1000), output"),
        Architecture("resnet18", 512, 32, "slice", 0, 3, ("fc",), "torchvision ResNet-18"),
        Architecture("resnet50", 512, 32, "slice", 0, 3, ("fc",), "torchvision ResNet-50"),
        Architecture("densenet121", 512, 32, "slice", 0, 3, ("classifier",),
                     "torchvision DenseNet-121"),
        Architecture("inception_v3", 299, 75, "slice", 0, 3, ("fc",),
                     "torchvision Inception v3 without auxiliary logits (designed for 299)"),
        Architecture("ichnet", 256, 32, "slice", 1, 9, ("fc",),
                     "fast 2.5D CNN: 3 windows x 3 adjacent slices, global average pooling"),
        Architecture("ichnet_seq", 256, 32, "sequence", 1, 9, ("gru", "seq_fc"),
                     "ichnet per slice, then a bidirectional GRU over the series"),
    )
}
DEFAULT_ARCHITECTURE = "ichnet_seq"  # trained in two stages: see ml.train

# Inception's auxiliary classifier is built only with aux_logits=True: an ImageNet file holds it.
_IGNORED_KEYS: dict[str, tuple[str, ...]] = {"inception_v3": ("AuxLogits.",)}


def architecture(name: str) -> Architecture:
    """The registry entry of `name`; ValueError naming the argument when unknown."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"name: unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def build_model(
    name: str,
    *,
    num_labels: int = 6,
    in_channels: int | None = None,
    input_size: int | None = None,
    pretrained: Path | None = None,
    freeze_backbone: bool = False,
) -> nn.Module:
    """Build architecture `name`, outputting logits.

    in_channels / input_size default to the architecture's (`ARCHITECTURES[name]`); input_size
    only shapes the two study networks, whose flatten layer depends on it. `pretrained` is a
    local state_dict file (a bare state_dict, or a dict holding one under "state_dict"): a head
    of another size is left freshly initialised and a 3-channel first conv is spread over
    `in_channels`. `freeze_backbone` trains the head only, as the study fine-tuned its
    ImageNet models; call `train_mode` rather than `.train()` to keep frozen BatchNorm still.
    """
    spec = architecture(name)
    in_channels = spec.in_channels if in_channels is None else in_channels
    input_size = spec.input_size if input_size is None else input_size
    if num_labels < 1:
        raise ValueError(f"num_labels: must be >= 1, got {num_labels}")
    if in_channels < 1:
        raise ValueError(f"in_channels: must be >= 1, got {in_channels}")
    if input_size < spec.min_input_size:
        raise ValueError(f"input_size: {name} needs >= {spec.min_input_size}, got {input_size}")
    model = _BUILDERS[name](num_labels, in_channels, input_size)
    if pretrained is not None:
        load_pretrained(model, pretrained, name)
    if freeze_backbone:
        for key, param in model.named_parameters():
            param.requires_grad = key.split(".", 1)[0] in spec.head
    return model


def train_mode(model: nn.Module) -> None:
    """`model.train()`, but BatchNorm layers whose parameters are frozen keep their statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


# --- the study's networks ------------------------------------------------------------------


def _valid(size: int, kernel: int, stride: int) -> int:
    """Output side of a Keras 'valid' (unpadded) conv or pooling."""
    return (size - kernel) // stride + 1


def _glorot(model: nn.Module) -> nn.Module:
    """Keras' default initialisation (glorot_uniform weights, zero biases), as the study had."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class VanillaCNN(nn.Module):
    """Conv2D(32, 5x5, strides 2, relu), MaxPooling2D(5x5, strides 2), Flatten, Dense(6).

    With 'valid' padding a 512 input gives 254 then 125: flatten = 32 * 125 * 125 = 500,000.
    """

    def __init__(self, num_labels: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = _valid(_valid(input_size, 5, 2), 5, 2)
        self.conv = nn.Conv2d(in_channels, 32, kernel_size=5, stride=2)
        self.pool = nn.MaxPool2d(kernel_size=5, stride=2)
        self.classifier = nn.Linear(32 * side * side, num_labels)
        _glorot(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class StudyAlexNet(nn.Module):
    """The study's AlexNet: five conv layers; max-pool (3x3/2) and dropout after the first,
    second and fifth; dense 4096, 4096, 1000 (ReLU, dropout 0.4, as in the mydatahack Keras
    version the study followed); then the output layer. Keras 'valid' padding, no
    normalisation layers; at 512 the flatten is 256 * 10 * 10 = 25,600.
    """

    def __init__(self, num_labels: int, in_channels: int, input_size: int, dropout: float = 0.4):
        super().__init__()
        side = _valid(_valid(_valid(input_size, 11, 4), 3, 2) - 4, 3, 2)  # conv1, pool, conv2, pool
        side = _valid(side - 6, 3, 2)  # three 3x3 convs, pool
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2), nn.Dropout(dropout),
            nn.Conv2d(96, 256, kernel_size=5), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2), nn.Dropout(dropout),
            nn.Conv2d(256, 384, kernel_size=3), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2), nn.Dropout(dropout),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * side * side, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 1000), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )  # fmt: skip
        self.fc = nn.Linear(1000, num_labels)
        _glorot(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


# --- torchvision ---------------------------------------------------------------------------


def _widen(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution, re-made (fresh weights) for `in_channels` inputs."""
    conv.in_channels = in_channels
    conv.weight = nn.Parameter(conv.weight.new_empty(conv.out_channels, in_channels, *conv.kernel_size))
    conv.reset_parameters()
    return conv


def _resnet(depth: int) -> _Builder:
    def build(num_labels: int, in_channels: int, input_size: int) -> nn.Module:
        make = torchvision.models.resnet18 if depth == 18 else torchvision.models.resnet50
        model = make(weights=None, num_classes=num_labels)
        if in_channels != 3:
            model.conv1 = _widen(model.conv1, in_channels)
        return model

    return build


def _densenet121(num_labels: int, in_channels: int, input_size: int) -> nn.Module:
    model = torchvision.models.densenet121(weights=None, num_classes=num_labels)
    if in_channels != 3:
        model.features.conv0 = _widen(model.features.conv0, in_channels)
    return model


def _inception_v3(num_labels: int, in_channels: int, input_size: int) -> nn.Module:
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=True, num_classes=num_labels
    )
    if in_channels != 3:
        model.Conv2d_1a_3x3.conv = _widen(model.Conv2d_1a_3x3.conv, in_channels)
    return model


# --- the fast triage models ----------------------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Stage(nn.Module):
    """Halve the resolution with a strided conv, then one residual 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = _conv_bn(cin, cout, 2)
        self.conv = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return torch.relu(x + self.conv(x))


class ICHNet(nn.Module):
    """A small 2.5D CNN for fast triage: 256 px, 9 channels (3 windows x 3 adjacent slices).

    Stem: two strided 3x3 convs (256 -> 64 px); three stages of strided conv + residual conv
    (64 -> 8 px, 48/96/160 channels); global average pooling; dropout; linear. About 0.5 M
    parameters and 0.15 GMAC per slice: a 40-slice series takes well under a second on two
    CPU threads. Any input side >= 32 works (global pooling).
    """

    def __init__(self, num_labels: int = 6, in_channels: int = 9, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, 16, 2), _conv_bn(16, 32, 2))
        self.stages = nn.Sequential(_Stage(32, 48), _Stage(48, 96), _Stage(96, 160))
        self.num_features = 160
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_labels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_features) pooled features."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


class SeriesModel(nn.Module):
    """Per-slice CNN features, then a bidirectional GRU over the whole series (the RSNA 2019
    winners' recipe): every slice's logits can use its neighbours.

    logits = encoder.fc(features) + seq_fc(gru(features)); seq_fc starts at zero, so the model
    starts as its slice encoder (and can be initialised from a trained `ichnet` file).

    Call it as `forward(x: (B, T, C, H, W), mask: (B, T) bool | None) -> (B, T, num_labels)`;
    `mask` marks real slices of a padded batch (padding at the end of each series). Inference
    over one long series can run `slice_features` in batches, then `sequence_logits` once.
    """

    def __init__(self, encoder: ICHNet, num_labels: int = 6, hidden: int = 96) -> None:
        super().__init__()
        self.encoder = encoder
        self.gru = nn.GRU(encoder.num_features, hidden, batch_first=True, bidirectional=True)
        self.seq_fc = nn.Linear(2 * hidden, num_labels)
        nn.init.zeros_(self.seq_fc.weight)
        nn.init.zeros_(self.seq_fc.bias)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, F), independent per slice."""
        return self.encoder.forward_features(x)

    def sequence_logits(
        self, features: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, F) features (+ real lengths of padded series) -> (B, T, num_labels)."""
        base = self.encoder.fc(self.encoder.dropout(features))
        if lengths is None:
            context, _ = self.gru(features)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                features, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.gru(packed)
            context, _ = nn.utils.rnn.pad_packed_sequence(
                out, batch_first=True, total_length=features.shape[1]
            )
        return base + self.seq_fc(context)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"x: expected (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        if mask is None:
            return self.sequence_logits(self.slice_features(x.flatten(0, 1)).view(b, t, -1))
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()) or not torch.equal(
            mask, torch.arange(t, device=mask.device)[None, :] < lengths[:, None]
        ):
            raise ValueError("mask: every series needs >= 1 slice, padding only at the end")
        real = self.slice_features(x[mask])  # padding never reaches BatchNorm
        features = real.new_zeros(b, t, real.shape[1])
        features[mask] = real
        return self.sequence_logits(features, lengths)


def _ichnet(num_labels: int, in_channels: int, input_size: int) -> nn.Module:
    return ICHNet(num_labels, in_channels)


def _ichnet_seq(num_labels: int, in_channels: int, input_size: int) -> nn.Module:
    return SeriesModel(ICHNet(num_labels, in_channels), num_labels)


_BUILDERS: dict[str, _Builder] = {
    "vanilla": VanillaCNN,
    "alexnet": StudyAlexNet,
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "densenet121": _densenet121,
    "inception_v3": _inception_v3,
    "ichnet": _ichnet,
    "ichnet_seq": _ichnet_seq,
}


# --- local weights -------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file; ModelError when it is missing or unreadable."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ModelError(f"weights file {path} does not hold a state_dict")
    return dict(data)


def _spread_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-conv kernel for other input channels: tile it, then keep its response scale."""
    repeats = -(-in_channels // weight.shape[1])
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return tiled * (weight.shape[1] / in_channels)


def load_pretrained(model: nn.Module, path: Path, name: str) -> None:
    """Load a local state_dict into `model` built as architecture `name` (see `build_model`)."""
    spec = architecture(name)
    source = read_state_dict(path)
    target = model.state_dict()
    if isinstance(model, SeriesModel) and not any(k.startswith("encoder.") for k in source):
        source = {f"encoder.{k}": v for k, v in source.items()}  # a trained `ichnet` file
    first_conv = next(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    ignored = _IGNORED_KEYS.get(name, ())
    unexpected = [k for k in source if k not in target and not k.startswith(ignored)]
    if unexpected:
        raise ModelError(f"{path}: keys not in {name}: {unexpected[:5]}")
    loaded = {}
    for key, tensor in target.items():
        value = source.get(key)
        in_head = key.split(".", 1)[0] in spec.head
        if value is not None and value.shape != tensor.shape:
            if key == first_conv and value.shape[:1] + value.shape[2:] == tensor.shape[:1] + tensor.shape[2:]:
                value = _spread_channels(value, tensor.shape[1])
            elif in_head:
                logger.info("%s: head %s %s kept fresh (file has %s)", name, key,
                            tuple(tensor.shape), tuple(value.shape))  # fmt: skip
                value = None
            else:
                raise ModelError(f"{path}: {key} has shape {tuple(value.shape)}, "
                                 f"{name} needs {tuple(tensor.shape)}")  # fmt: skip
        if value is None and not in_head:
            raise ModelError(f"{path}: {key} missing for {name}")
        if value is not None:
            loaded[key] = value
    model.load_state_dict(loaded, strict=False)
    logger.info("%s: loaded %d tensors from %s", name, len(loaded), path)
