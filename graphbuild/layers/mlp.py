"""Feed-forward blocks: ``MLP`` (fc, activation, proj) and ``GatedMLP`` (act(gate) * up, then
down), tensor parallel as in Megatron/TensorRT-LLM: the first projections are ``ColumnLinear``
without gather, the last a ``RowLinear``, so one all-reduce per block."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from graphbuild import dtypes
from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError
from graphbuild.layers.linear import ColumnLinear, RowLinear
from graphbuild.layers.module import Module
from graphbuild.layers.parallel import child_seed, layer_label
from graphbuild.tensor import Tensor

#: Activation names (HuggingFace's spellings) -> function.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": lambda x: F.gelu(x, "none"),  # exact, erf (BERT)
    "gelu_tanh": lambda x: F.gelu(x, "tanh"),  # GPT-2
    "gelu_new": lambda x: F.gelu(x, "tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, "tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(what: str, hidden_act: str) -> Callable[[Tensor], Tensor]:
    """The activation called ``hidden_act``.

    Raises:
        GraphConstructionError: an unknown name, listing the known ones.
    """
    try:
        return ACTIVATIONS[hidden_act]
    except (KeyError, TypeError):
        raise GraphConstructionError(f"{what}: unknown hidden_act {hidden_act!r}; choose one of {', '.join(sorted(ACTIVATIONS))}") from None


class MLP(Module):
    """``proj(act(fc(x)))``: ``fc`` is a ``ColumnLinear`` (no gather), ``proj`` a ``RowLinear``.

    Args:
        hidden_size: input and output size.
        ffn_hidden_size: the intermediate size (split over the ranks; need not divide evenly).
        hidden_act: ``"gelu"`` (exact erf, BERT), ``"gelu_tanh"``/``"gelu_new"`` (tanh
            approximation, GPT-2), ``"relu"`` or ``"silu"``.
        bias: whether ``fc`` and ``proj`` have biases.
        dtype, tp_size, tp_group, tp_rank: as ``ColumnLinear``.
        seed: seeds ``fc`` and ``proj`` (distinct seeds derived from it).
        name: the layer's name when called on its own.

    Parameters: ``fc.weight [ffn_local, hidden]``, ``fc.bias``, ``proj.weight [hidden, ffn_local]``,
    ``proj.bias [hidden]``.
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_hidden_size: int,
        *,
        hidden_act: str = "gelu",
        bias: bool = True,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        self.hidden_act = hidden_act
        self._act = activation(layer_label("MLP", name), hidden_act)
        tp = {"tp_size": tp_size, "tp_group": tp_group, "tp_rank": tp_rank, "dtype": dtype, "bias": bias}
        self.fc = ColumnLinear(hidden_size, ffn_hidden_size, gather_output=False, seed=child_seed(seed, 0), name=_sub(name, "fc"), **tp)
        self.proj = RowLinear(ffn_hidden_size, hidden_size, seed=child_seed(seed, 1), name=_sub(name, "proj"), **tp)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., hidden_size]`` -> ``[..., hidden_size]``."""
        return self.proj(self._act(self.fc(x)))

    def extra_repr(self) -> str:
        return f"hidden_act={self.hidden_act!r}"


class GatedMLP(Module):
    """``proj(act(gate(x)) * fc(x))`` (LLaMA's SwiGLU with the default ``silu``).

    ``gate`` and ``fc`` (the "up" projection) are ``ColumnLinear`` without gather, ``proj`` (the
    "down" projection) a ``RowLinear``. Arguments as ``MLP``; ``bias`` defaults to False and
    ``hidden_act`` to ``"silu"``.
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_hidden_size: int,
        *,
        hidden_act: str = "silu",
        bias: bool = False,
        dtype: dtypes.DTypeLike = "float32",
        tp_size: int = 1,
        tp_group: Optional[Sequence[int]] = None,
        tp_rank: Optional[int] = None,
        seed: Optional[int] = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        self.hidden_act = hidden_act
        self._act = activation(layer_label("GatedMLP", name), hidden_act)
        tp = {"tp_size": tp_size, "tp_group": tp_group, "tp_rank": tp_rank, "dtype": dtype, "bias": bias}
        self.gate = ColumnLinear(hidden_size, ffn_hidden_size, gather_output=False, seed=child_seed(seed, 0), name=_sub(name, "gate"), **tp)
        self.fc = ColumnLinear(hidden_size, ffn_hidden_size, gather_output=False, seed=child_seed(seed, 1), name=_sub(name, "fc"), **tp)
        self.proj = RowLinear(ffn_hidden_size, hidden_size, seed=child_seed(seed, 2), name=_sub(name, "proj"), **tp)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., hidden_size]`` -> ``[..., hidden_size]``."""
        return self.proj(F.mul(self._act(self.gate(x)), self.fc(x)))

    def extra_repr(self) -> str:
        return f"hidden_act={self.hidden_act!r}"


def _sub(name: Optional[str], child: str) -> Optional[str]:
    """The name errors use for a sublayer (``"mlp.fc"``); paths come from the module tree when called."""
    return f"{name}.{child}" if name else child
