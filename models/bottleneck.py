"""Bottleneck adapters (Houlsby, Pfeiffer, Parallel), which peft does not provide.

A bottleneck is ``up(act(down(h)))`` with ``down: hidden -> hidden / reduction_factor``
and ``up`` back to ``hidden``, both plain ``nn.Linear`` (so Opacus computes their
per-example gradients with its ordinary Linear sampler). ``up`` starts at zero, so a model
with a fresh adapter computes exactly what the base model computes.

Placement, per transformer layer (He et al., ICLR 2022, "Towards a unified view"):

- ``houlsby``: ``h + B(h)`` on the attention output projection and on the FFN output
  projection, before the residual connection and layer norm (Houlsby et al., 2019);
- ``pfeiffer``: the same, on the FFN output projection only (Pfeiffer et al., 2021);
- ``parallel``: ``FFN(x) + scaling * B(x)``, the bottleneck reading the FFN's input.

The adapter modules are added as children of the projection they follow (base parameter
names do not change) and run from forward hooks. :data:`LAYER_SITES` names those
projections per family. Models with a bottleneck adapter are saved by
``models.save_adapter`` in secfed's own layout; peft cannot load them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import AdapterConfigError

BOTTLENECK_METHODS: tuple[str, ...] = ("houlsby", "pfeiffer", "parallel")
NON_LINEARITIES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}
BOTTLENECK_OPTIONS: dict[str, frozenset[str]] = {
    "houlsby": frozenset({"reduction_factor", "non_linearity"}),
    "pfeiffer": frozenset({"reduction_factor", "non_linearity"}),
    "parallel": frozenset({"reduction_factor", "non_linearity", "scaling"}),
}
#: Attribute of a model that carries its :class:`BottleneckConfig`.
CONFIG_ATTR = "secfed_bottleneck"
_CHILD = "bottleneck"


@dataclass(frozen=True)
class LayerSites:
    """Regexes over module names; group ``layer`` ties a layer's three sites together."""

    attn_out: str
    ffn_in: str
    ffn_out: str


def _sites(layer: str, attn_out: str, ffn_in: str, ffn_out: str) -> LayerSites:
    def pattern(leaf: str) -> str:
        return rf"^(?P<layer>(?:.*\.)?{layer}\.\d+)\.{leaf}$"

    return LayerSites(pattern(attn_out), pattern(ffn_in), pattern(ffn_out))


_BERT_SITES = _sites("layer", r"attention\.output\.dense", r"intermediate\.dense", r"output\.dense")
_LLAMA_SITES = _sites("layers", r"self_attn\.o_proj", r"mlp\.up_proj", r"mlp\.down_proj")

#: Where the adapters go, per family (``config.model_type``).
LAYER_SITES: dict[str, LayerSites] = {
    "bert": _BERT_SITES,
    "roberta": _BERT_SITES,
    "deberta-v2": _BERT_SITES,
    "distilbert": _sites("layer", r"attention\.out_lin", r"ffn\.lin1", r"ffn\.lin2"),
    "albert": _sites("albert_layers", r"attention\.dense", r"ffn", r"ffn_output"),
    "gpt2": _sites("h", r"attn\.c_proj", r"mlp\.c_fc", r"mlp\.c_proj"),
    "bart": _sites("layers", r"self_attn\.out_proj", r"fc1", r"fc2"),
    "llama": _LLAMA_SITES,
    "qwen2": _LLAMA_SITES,
    "mistral": _LLAMA_SITES,
}


@dataclass(frozen=True)
class BottleneckConfig:
    """A bottleneck adapter's method, options and the family it was built for."""

    method: str
    reduction_factor: int = 16
    non_linearity: str = "relu"
    scaling: float = 4.0  # parallel only; He et al. use 4 for the FFN-parallel adapter
    family: str = ""

    def __post_init__(self) -> None:
        if self.method not in BOTTLENECK_METHODS:
            raise AdapterConfigError(
                f"unknown bottleneck method {self.method!r}; choose one of "
                f"{', '.join(BOTTLENECK_METHODS)}"
            )
        rf = self.reduction_factor
        if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
            raise AdapterConfigError(
                f"adapter option reduction_factor={rf!r} must be a positive integer"
            )
        if self.non_linearity not in NON_LINEARITIES:
            raise AdapterConfigError(
                f"adapter option non_linearity={self.non_linearity!r} is unknown; choose one "
                f"of {', '.join(NON_LINEARITIES)}"
            )
        s = self.scaling
        if isinstance(s, bool) or not isinstance(s, int | float) or not s > 0:
            raise AdapterConfigError(f"adapter option scaling={s!r} must be a positive number")

    @classmethod
    def from_options(cls, method: str, options: dict[str, Any], *, family: str) -> BottleneckConfig:
        """Build from an AdapterSpec's options (names already validated)."""
        return cls(method=method, family=family, **options)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, read back by ``BottleneckConfig(**d)``."""
        return asdict(self)


class Bottleneck(nn.Module):
    """``up(act(down(x)))`` with ``up`` initialised to zero."""

    def __init__(self, hidden: int, *, reduction_factor: int, non_linearity: str) -> None:
        super().__init__()
        width = max(1, hidden // reduction_factor)
        self.down = nn.Linear(hidden, width)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.pending: torch.Tensor | None = None  # parallel: the FFN input of this call
        self.enabled = True  # False inside adapters_disabled(): the base model's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))  # type: ignore[no-any-return]


def _mark(hook: Any) -> Any:
    hook.secfed_bottleneck = True  # lets strip_bottleneck remove only its own hooks
    return hook


@_mark
def _sequential_hook(module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
    adapter = getattr(module, _CHILD)
    if not adapter.enabled:
        return output
    return output + adapter(output)  # type: ignore[no-any-return]


# The parallel hooks are small objects, not closures: copy.deepcopy(model) copies them
# together with the adapter they point to (a closure would keep pointing at the original).
class _ParallelAdd:
    """Forward hook on the FFN output projection: ``output + scaling * B(ffn_input)``."""

    secfed_bottleneck = True

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        adapter = getattr(module, _CHILD)
        x, adapter.pending = adapter.pending, None
        if x is None:
            raise RuntimeError("parallel adapter ran without its FFN input; was the FFN bypassed?")
        if not adapter.enabled:
            return output
        return output + self.scale * adapter(x)  # type: ignore[no-any-return]


class _Tap:
    """Forward pre-hook on the FFN's first layer: hands the FFN input to the adapter."""

    secfed_bottleneck = True

    def __init__(self, adapter: Bottleneck) -> None:
        self.adapter = adapter

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.adapter.pending = args[0]


def _matches(model: nn.Module, pattern: str) -> dict[str, tuple[str, nn.Module]]:
    found: dict[str, tuple[str, nn.Module]] = {}
    regex = re.compile(pattern)
    for name, module in model.named_modules():
        m = regex.match(name)
        if m is not None:
            found[m.group("layer")] = (name, module)
    return found


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int):
        raise AdapterConfigError("bottleneck adapters need a transformers model with hidden_size")
    return hidden


def sites_for(family: str) -> LayerSites:
    """The adapter sites of ``family``; a clear error for architectures not in the table."""
    try:
        return LAYER_SITES[family]
    except KeyError:
        raise AdapterConfigError(
            f"bottleneck adapters do not know where the attention and FFN outputs of "
            f"{family!r} models are; supported families: {', '.join(LAYER_SITES)} (or use "
            "lora/ia3, which take target_modules)"
        ) from None


def inject_bottleneck(model: nn.Module, config: BottleneckConfig) -> list[str]:
    """Add the adapters to ``model`` in place; returns the module names they follow."""
    if hasattr(model, CONFIG_ATTR):
        raise AdapterConfigError("model already has a bottleneck adapter; build a fresh model")
    sites = sites_for(config.family)
    hidden = _hidden_size(model)
    ffn_out = _matches(model, sites.ffn_out)
    if not ffn_out:
        raise AdapterConfigError(
            f"no module of this {type(model).__name__} matches the {config.family} FFN output "
            f"pattern {sites.ffn_out!r}; pass the family the model really is"
        )
    targets: list[tuple[str, nn.Module, str]] = [(n, m, "ffn") for n, m in ffn_out.values()]
    if config.method == "houlsby":
        targets += [(n, m, "attn") for n, m in _matches(model, sites.attn_out).values()]
    ffn_in = _matches(model, sites.ffn_in) if config.method == "parallel" else {}
    if config.method == "parallel" and ffn_in.keys() != ffn_out.keys():
        raise AdapterConfigError(
            f"{config.family} FFN inputs {sorted(ffn_in)} and outputs {sorted(ffn_out)} do not "
            "pair up layer by layer; the family table in models/bottleneck.py needs fixing"
        )
    by_name = {n: layer for layer, (n, _) in ffn_out.items()}
    for name, module, _kind in sorted(targets, key=lambda t: t[0]):
        adapter = Bottleneck(
            hidden,
            reduction_factor=config.reduction_factor,
            non_linearity=config.non_linearity,
        )
        module.add_module(_CHILD, adapter)
        if config.method == "parallel":
            ffn_in[by_name[name]][1].register_forward_pre_hook(_Tap(adapter))
            module.register_forward_hook(_ParallelAdd(float(config.scaling)))
        else:
            module.register_forward_hook(_sequential_hook)
    setattr(model, CONFIG_ATTR, config)
    return sorted(name for name, _, _ in targets)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base: every bottleneck adds nothing until the block exits."""
    adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
    states = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a, state in zip(adapters, states, strict=True):
            a.enabled = state


def bottleneck_config_of(model: nn.Module) -> BottleneckConfig | None:
    """The bottleneck config of a model made by ``attach_adapter``, else None."""
    found = getattr(model, CONFIG_ATTR, None)
    return found if isinstance(found, BottleneckConfig) else None


def strip_bottleneck(model: nn.Module) -> None:
    """Remove the adapters and their hooks from ``model`` in place (the base stays)."""
    for module in list(model.modules()):
        if isinstance(getattr(module, _CHILD, None), Bottleneck):
            delattr(module, _CHILD)
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "secfed_bottleneck", False):
                    del hooks[key]
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
