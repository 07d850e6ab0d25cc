"""Registries of activations, normalisations and initialisations shared by the models."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
}

NORMS = ("batch", "group", "layer", "none")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r}: choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def norm(kind: str, channels: int, dims: int, groups: int = 8) -> nn.Module:
    """Normalisation over `channels` feature maps of a `dims`-D conv (dims=0: a linear layer)."""
    if kind == "batch":
        return {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims](channels)
    if kind == "group":
        return nn.GroupNorm(_largest_divisor(channels, groups), channels)
    if kind == "layer":
        return nn.LayerNorm(channels) if dims == 0 else nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm={kind!r}: choose one of {list(NORMS)}")


def _largest_divisor(channels: int, at_most: int) -> int:
    return max(g for g in range(1, min(channels, at_most) + 1) if channels % g == 0)


INITS: dict[str, Callable[[nn.Parameter], object] | None] = {
    "default": None,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "orthogonal": nn.init.orthogonal_,
}


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Apply a weight-init scheme to every conv/linear weight; biases start at zero."""
    if scheme not in INITS:
        raise ValueError(f"model.init={scheme!r}: choose one of {sorted(INITS)}")
    init = INITS[scheme]
    if init is None:
        return model
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def conv_cls(dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d}[dims]


def pool_cls(dims: int) -> type[nn.Module]:
    return {1: nn.MaxPool1d, 2: nn.MaxPool2d}[dims]


def global_pool(dims: int) -> nn.Module:
    return {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims](1)


def spatial_dims(input_shape: tuple[int, ...]) -> int:
    """(C, L) -> 1-D convolutions, (C, H, W) -> 2-D."""
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"convolutional models need examples shaped (C, L) or (C, H, W), got {input_shape}: "
            "use model=mlp or model=logreg for flat features, or give each example a channel "
            f"axis (shape (1, {', '.join(map(str, input_shape))}))"
        )
    return len(input_shape) - 1
