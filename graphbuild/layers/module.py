"""``Module`` and ``Parameter``: a small PyTorch-like way to build networks from layers.

A ``Module`` registers the ``Module`` and ``Parameter`` objects assigned to its attributes, so
every parameter gets a hierarchical name (``"wte.weight"``, ``"blocks.0.attn.qkv.weight"``). Calling
a module (``module(x)``) runs its ``forward``; while it runs, the names of every parameter and
submodule under the called (root) module are known, and a parameter used in ``forward`` becomes a
constant of the input's network under its hierarchical name, once per network::

    class Model(Module):
        def __init__(self):
            super().__init__()
            self.wte = Embedding(32000, 4096, seed=0)

        def forward(self, ids):
            return self.wte(ids)

    y = Model()(ids)           # adds constant 'wte.weight' and embedding node 'wte'

Names are relative to the module that is called, as in PyTorch's ``named_parameters()``; a root
module may carry its own ``name`` prefix (``Embedding(..., name="wte")`` called on its own gives
``"wte.weight"``). A module or parameter reachable by several paths (tied weights) keeps the first
one.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from graphbuild import dtypes
from graphbuild.errors import CheckpointError, GraphConstructionError
from graphbuild.ir.network import Network, current_network
from graphbuild.tensor import Tensor

# Names of the parameters and modules under the module being called: {id(obj): name}.
_NAMES: contextvars.ContextVar[Optional[dict[int, str]]] = contextvars.ContextVar("graphbuild_module_names", default=None)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


WeightLoader = Callable[[np.ndarray], np.ndarray]


class Parameter:
    """A named array owned by a module; becomes a network constant when a forward uses it.

    A tensor-parallel layer holds only its rank's slice of a parameter. ``full_shape`` is the
    shape the parameter has in a checkpoint (the whole, unsharded tensor) and ``weight_loader``
    cuts this rank's slice out of it, as TensorRT-LLM's layers do; ``load`` applies both.

    Args:
        data: the array (copied only if a dtype conversion is needed).
        dtype: graphbuild dtype to convert ``data`` to; defaults to the array's own (float64
            becomes float32).
        name: fallback name when the parameter is used outside a module call.
        full_shape: the checkpoint shape (default: ``data``'s shape, an unsharded parameter).
        weight_loader: maps the checkpoint tensor (``full_shape``) to this parameter's data
            (``shape``); default: the tensor itself.

    Attributes:
        data: the numpy array.
        dtype: its graphbuild ``DType``.
    """

    def __init__(
        self,
        data: Any,
        dtype: Optional[dtypes.DTypeLike] = None,
        *,
        name: Optional[str] = None,
        full_shape: Optional[Sequence[int]] = None,
        weight_loader: Optional[WeightLoader] = None,
    ) -> None:
        array = np.asarray(data)
        if dtype is not None:
            array = array.astype(dtypes.as_dtype(dtype).numpy, copy=False)
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        self.dtype = dtypes.as_dtype(array.dtype)
        self.data = array
        self.name = name
        self.full_shape: tuple[int, ...] = tuple(int(d) for d in full_shape) if full_shape is not None else tuple(array.shape)
        self.weight_loader = weight_loader
        self._constants: "weakref.WeakKeyDictionary[Network, Tensor]" = weakref.WeakKeyDictionary()

    def load(self, tensor: np.ndarray, *, what: Optional[str] = None) -> None:
        """Replaces the data with this rank's slice of the checkpoint ``tensor`` (cast to ``dtype``).

        Networks built before keep the old values; build again after loading.

        Args:
            tensor: the whole checkpoint tensor, of shape ``full_shape``.
            what: names the parameter and its source in errors (``"'h.0.attn.weight' in model.safetensors"``).

        Raises:
            CheckpointError: ``tensor`` has the wrong shape, or the loader gave the wrong shape.
        """
        label = what or (f"parameter '{self.name}'" if self.name else "parameter")
        array = np.asarray(tensor)
        if tuple(array.shape) != self.full_shape:
            raise CheckpointError(f"{label}: checkpoint tensor has shape {list(array.shape)}, expected {list(self.full_shape)}")
        piece = array if self.weight_loader is None else np.asarray(self.weight_loader(array))
        if tuple(piece.shape) != self.shape:
            raise CheckpointError(f"{label}: weight_loader gave shape {list(piece.shape)}, expected {list(self.shape)}")
        data = np.ascontiguousarray(piece, dtype=self.dtype.numpy)
        # Own the data: a view would keep the whole checkpoint tensor (or its file mapping) alive.
        self.data = data.copy() if np.may_share_memory(data, array) else data
        self._constants = weakref.WeakKeyDictionary()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def qualified_name(self) -> Optional[str]:
        """Its hierarchical name under the module being called, else the fallback ``name``."""
        names = _NAMES.get()
        if names is not None and id(self) in names:
            return names[id(self)]
        return self.name

    def tensor(self, network: Optional[Network] = None) -> Tensor:
        """This parameter as a constant of ``network`` (default: the current network).

        The constant is created on first use, named by ``qualified_name()``, and reused afterwards:
        a parameter appears at most once per network.

        Raises:
            GraphConstructionError: the name is already taken by another value of the network.
        """
        net = network if network is not None else current_network()
        found = self._constants.get(net)
        if found is None:
            found = net.add_constant(self.data, name=self.qualified_name())
            self._constants[net] = found
        return found

    def __repr__(self) -> str:
        name = f" '{self.name}'" if self.name else ""
        return f"Parameter{name}({self.dtype}{list(self.shape)})"


class Module:
    """Base class of layers: registers submodules and parameters under hierarchical names.

    Subclasses call ``super().__init__()`` first, assign ``Parameter`` and ``Module`` attributes,
    and implement ``forward``. Calling the module runs ``forward``.

    Args:
        name: prefix of every name under this module when it is the module being called; ignored
            when the module is called as part of a parent, whose attribute path is used instead.
    """

    def __init__(self, *, name: Optional[str] = None) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "name", name)

    # ------------------------------------------------------------------------- registration
    def _registries(self) -> tuple[dict[str, Parameter], dict[str, "Module"]]:
        try:
            return self.__dict__["_parameters"], self.__dict__["_modules"]
        except KeyError:
            raise GraphConstructionError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            ) from None

    def __setattr__(self, attr: str, value: Any) -> None:
        params, modules = self._registries()
        params.pop(attr, None)
        modules.pop(attr, None)
        if isinstance(value, Parameter):
            params[attr] = value
            self.__dict__.pop(attr, None)
        elif isinstance(value, Module):
            modules[attr] = value
            self.__dict__.pop(attr, None)
        else:
            object.__setattr__(self, attr, value)

    def __getattr__(self, attr: str) -> Any:
        # Only called when normal lookup fails: look in the registries.
        registries = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        for registry in registries:
            if registry is not None and attr in registry:
                return registry[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __delattr__(self, attr: str) -> None:
        params, modules = self._registries()
        if attr in params:
            del params[attr]
        elif attr in modules:
            del modules[attr]
        else:
            object.__delattr__(self, attr)

    # ------------------------------------------------------------------------- traversal
    def named_modules(self, prefix: Optional[str] = None) -> Iterator[tuple[str, "Module"]]:
        """``(path, module)`` for this module and every submodule, each module once.

        Args:
            prefix: path of this module; defaults to its ``name`` (or ``""``).
        """
        seen: set[int] = set()

        def walk(module: "Module", path: str) -> Iterator[tuple[str, "Module"]]:
            if id(module) in seen:
                return
            seen.add(id(module))
            yield path, module
            for attr, child in module._registries()[1].items():
                yield from walk(child, _join(path, attr))

        yield from walk(self, (self.name or "") if prefix is None else prefix)

    def named_parameters(self, prefix: Optional[str] = None) -> Iterator[tuple[str, Parameter]]:
        """``(hierarchical name, parameter)`` for every parameter, each parameter once.

        Args:
            prefix: path of this module; defaults to its ``name`` (or ``""``).
        """
        seen: set[int] = set()
        for path, module in self.named_modules(prefix):
            for attr, param in module._registries()[0].items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield _join(path, attr), param

    def parameters(self) -> Iterator[Parameter]:
        """Every parameter, each once."""
        for _, param in self.named_parameters():
            yield param

    def children(self) -> Iterator["Module"]:
        """Direct submodules, in assignment order."""
        yield from self._registries()[1].values()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Hierarchical name -> array of every parameter."""
        return {name: param.data for name, param in self.named_parameters()}

    def num_parameters(self) -> int:
        """Total number of elements over all parameters."""
        return int(sum(param.data.size for param in self.parameters()))

    # ------------------------------------------------------------------------- calling
    @contextlib.contextmanager
    def _naming(self) -> Iterator[None]:
        if _NAMES.get() is not None:  # called from a parent's forward: its names apply
            yield
            return
        names: dict[int, str] = {}
        for path, module in self.named_modules():
            names.setdefault(id(module), path)
        for path, param in self.named_parameters():
            names.setdefault(id(param), path)
        token = _NAMES.set(names)
        try:
            yield
        finally:
            _NAMES.reset(token)

    @property
    def path(self) -> Optional[str]:
        """This module's hierarchical path during a call (``"wte"``); ``name`` otherwise."""
        names = _NAMES.get()
        if names is not None and id(self) in names:
            return names[id(self)] or None
        return self.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._naming():
            return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    # ------------------------------------------------------------------------- printing
    def extra_repr(self) -> str:
        """Constructor arguments shown by ``repr``; subclasses override."""
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        children = list(self._registries()[1].items())
        if not children:
            return head + ")"
        lines = [head]
        for attr, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({attr}): {body}")
        return "\n".join(lines) + "\n)"
