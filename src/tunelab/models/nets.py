"""The model zoo: logistic regression, MLP, plain CNN, ResNet; 1-D or 2-D from the input shape.

Every model exposes `.head` (its final nn.Linear) so fine-tuning can replace or train it apart.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunelab.models import layers as L


class Classifier(nn.Module):
    """backbone -> flatten -> dropout -> head."""

    def __init__(
        self, backbone: nn.Module, features: int, num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(
            self.dropout(torch.flatten(self.backbone(x), 1))
        )  # (N, ...) -> (N, classes)


def logreg(input_shape: tuple[int, ...], num_classes: int, init: str = "default") -> nn.Module:
    """Multinomial logistic regression on the flattened input."""
    return L.initialise(Classifier(nn.Flatten(), math.prod(input_shape), num_classes, 0.0), init)


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 256,
    depth: int = 2,
    activation: str = "relu",
    norm: str = "none",
    dropout: float = 0.0,
    init: str = "default",
) -> nn.Module:
    """`depth` hidden layers of `width` units: linear -> norm -> activation -> dropout."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), L.norm(norm, width, 0), L.activation(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = width
    return L.initialise(Classifier(nn.Sequential(*layers), features, num_classes, 0.0), init)


def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    depth: int = 4,
    kernel_size: int = 5,
    pool_every: int = 1,
    max_pools: int = 3,
    width_mult: float = 1.0,
    activation: str = "relu",
    norm: str = "batch",
    dropout: float = 0.0,
    head: str = "flatten",
    init: str = "kaiming_normal",
) -> nn.Module:
    """Plain CNN: `depth` blocks of conv(k) -> norm -> activation, a 2x max-pool after every
    `pool_every` blocks (at most `max_pools`), then flatten (or global average) -> dropout -> head.

    Dropout sits only in front of the head, never right before a BatchNorm (variance shift)."""
    dims = L.spatial_dims(input_shape)
    channels, size = input_shape[0], list(input_shape[1:])
    blocks: list[nn.Module] = []
    pools = 0
    for i in range(depth):
        out = int(round(width * width_mult**i))
        blocks += [
            L.conv_cls(dims)(
                channels, out, kernel_size, padding=kernel_size // 2, bias=norm == "none"
            ),
            L.norm(norm, out, dims),
            L.activation(activation),
        ]
        channels = out
        if (i + 1) % pool_every == 0 and pools < max_pools and min(size) >= 2:
            blocks.append(L.pool_cls(dims)(2))
            size = [s // 2 for s in size]
            pools += 1
    if head == "global_avg":
        blocks.append(L.global_pool(dims))
        features = channels
    elif head == "flatten":
        features = channels * math.prod(size)
    else:
        raise ValueError(f"model.head={head!r}: choose one of ['flatten', 'global_avg']")
    return L.initialise(Classifier(nn.Sequential(*blocks), features, num_classes, dropout), init)


class BasicBlock(nn.Module):
    """ResNet basic block: two k-convs with norm, identity (or 1x1 projection) shortcut."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, dims: int, k: int, norm: str, act: str
    ) -> None:
        super().__init__()
        conv = L.conv_cls(dims)
        self.body = nn.Sequential(
            conv(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
            L.norm(norm, c_out, dims),
            L.activation(act),
            conv(c_out, c_out, k, padding=k // 2, bias=False),
            L.norm(norm, c_out, dims),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(
                conv(c_in, c_out, 1, stride=stride, bias=False), L.norm(norm, c_out, dims)
            )
        )
        self.act = L.activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2),
    kernel_size: int = 3,
    activation: str = "relu",
    norm: str = "batch",
    dropout: float = 0.0,
    init: str = "kaiming_normal",
) -> nn.Module:
    """ResNet-18-style network (CIFAR stem: one k-conv, no max-pool); stages double the width and
    halve the resolution. `blocks_per_stage=(2, 2, 2, 2)` is ResNet-18."""
    dims = L.spatial_dims(input_shape)
    k = kernel_size
    layers: list[nn.Module] = [
        L.conv_cls(dims)(input_shape[0], width, k, padding=k // 2, bias=False),
        L.norm(norm, width, dims),
        L.activation(activation),
    ]
    channels = width
    for stage, n_blocks in enumerate(blocks_per_stage):
        out = width * 2**stage
        for b in range(n_blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append(BasicBlock(channels, out, stride, dims, k, norm, activation))
            channels = out
    layers.append(L.global_pool(dims))
    return L.initialise(Classifier(nn.Sequential(*layers), channels, num_classes, dropout), init)
