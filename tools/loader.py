"""Loading the user's network function from a ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION`` spec and
calling it with the keyword arguments it accepts.

- ``examples/embedding_tp.py:make_network``: a Python file, executed as a fresh module (its
  directory is put on ``sys.path`` first, as ``python FILE.py`` would).
- ``mypackage.models:make_network``: a module imported by name (the working directory is put on
  ``sys.path`` first, as ``python -m`` would).
- Without ``:FUNCTION`` the function is ``make_network``.

``--set key=value`` values are converted to the type the function's annotation names for that
parameter (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, ``Literal[...]``, unions of
these, and path types); an unannotated parameter (or one taken through ``**kwargs``) gets a guess:
bool (``true``/``false``), ``none``, int, float, or else the string, in that order.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Mapping, Sequence

from graphbuild.errors import GraphBuildError
from graphbuild.ir import Network
from graphbuild.tools.common import CLIError

DEFAULT_FUNCTION = "make_network"


def split_spec(spec: str) -> tuple[str, str]:
    """``"a/b.py:fn"`` -> ``("a/b.py", "fn")``; the function defaults to ``make_network``."""
    target, sep, func = spec.rpartition(":")
    if not sep:
        target, func = spec, DEFAULT_FUNCTION
    if not target or not func.isidentifier():
        raise CLIError(f"bad function spec '{spec}': expected FILE.py:FUNCTION or MODULE:FUNCTION, e.g. examples/embedding_tp.py:make_network")
    return target, func


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise CLIError(f"bad function spec: file '{path}' does not exist")
    module_name = f"graphbuild_user_{abs(hash(str(path.resolve())))}_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise CLIError(f"bad function spec: '{path}' cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except GraphBuildError:
        raise
    except SyntaxError as exc:
        raise CLIError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from exc
    except SystemExit as exc:
        raise CLIError(f"{path}: executing the file called sys.exit({exc.code!r}); {_NO_EXIT}") from exc
    except Exception as exc:
        raise CLIError(f"{path}: executing the file raised {type(exc).__name__}: {exc}") from exc
    return module


_NO_EXIT = "nothing was built (guard a script's own command line with `if __name__ == \"__main__\":`)"


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(f"{exc.name}.")):  # the spec's module, not one it imports
            raise CLIError(f"bad function spec: no Python file or module named '{name}' (files must end in .py)") from exc
        raise CLIError(f"importing '{name}' failed: {exc}") from exc
    except GraphBuildError:
        raise
    except SystemExit as exc:
        raise CLIError(f"importing '{name}' called sys.exit({exc.code!r}); {_NO_EXIT}") from exc
    except Exception as exc:
        raise CLIError(f"importing '{name}' raised {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def loaded_function(spec: str) -> Iterator[Callable[..., Any]]:
    """The function named by ``spec``, with its file's directory (or the working directory) kept on
    ``sys.path`` while the block runs, so imports inside the function work too.

    Raises:
        CLIError: the file or module does not exist or fails to load, or lacks the function.
    """
    target, func_name = split_spec(spec)
    is_file = target.endswith(".py") or os.sep in target or "/" in target
    with _on_sys_path(str(Path(target).resolve().parent) if is_file else os.getcwd()):
        module = _load_file(Path(target)) if is_file else _import_module(target)
        func = getattr(module, func_name, None)
        if func is None:
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__)
            raise CLIError(f"bad function spec: '{target}' has no function '{func_name}' (it defines: {', '.join(names) or 'none'})")
        if not callable(func):
            raise CLIError(f"bad function spec: '{target}:{func_name}' is a {type(func).__name__}, not a function")
        yield func


def parse_value(text: str) -> Any:
    """The guess for an unannotated parameter: ``"true"`` -> True, ``"none"`` -> None, ``"3"`` -> 3,
    ``"0.5"`` -> 0.5, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_settings(items: Sequence[str]) -> dict[str, str]:
    """``["vocab_size=1000", "dtype=float16"]`` -> ``{"vocab_size": "1000", "dtype": "float16"}``.

    Values stay strings until ``convert_settings`` knows the function. Dashes in keys become
    underscores (``vocab-size=1000``).

    Raises:
        CLIError: an item is not ``key=value``, the key is not an identifier, or is given twice.
    """
    settings: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise CLIError(f"bad --set '{item}': expected KEY=VALUE with KEY a Python identifier, e.g. --set vocab_size=1000")
        if key in settings:
            raise CLIError(f"--set {key} is given twice")
        settings[key] = value
    return settings


_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


def _annotations(func: Callable[..., Any]) -> dict[str, Any]:
    """Parameter name -> annotation, resolved from strings (``from __future__ import annotations``)
    where the names resolve; an annotation that does not resolve counts as absent."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # one unresolvable annotation: resolve the others one by one
        hints = {}
        namespace = getattr(func, "__globals__", {})
        for name, param in params.items():
            annotation = param.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, dict(namespace), {"typing": typing})  # noqa: S307 - the user's own annotation
                except Exception:
                    continue
            hints[name] = annotation
    return {name: hints[name] for name in params if name in hints and params[name].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def convert_value(text: str, annotation: Any) -> Any:
    """``text`` as a value of ``annotation``.

    Raises:
        ValueError: the text is not such a value (the message says what is expected).
    """
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return parse_value(text)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and text.strip().lower() in _NONE:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return convert_value(text, option)
            except ValueError:
                continue
        raise ValueError(f"expected {_type_name(annotation)}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if (isinstance(choice, bool) and text.strip().lower() in (_TRUE if choice else _FALSE)) or str(choice) == text:
                return choice
        raise ValueError(f"expected one of {', '.join(str(c) for c in choices)}")
    if annotation is type(None):
        if text.strip().lower() in _NONE:
            return None
        raise ValueError("expected none")
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE + _FALSE:
            return lowered in _TRUE
        raise ValueError("expected a bool (true or false)")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an int") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a float") from None
    if annotation is str:
        return text
    if isinstance(annotation, type) and issubclass(annotation, (PurePath, os.PathLike)):
        return annotation(text)
    raise ValueError(f"a {_type_name(annotation)} cannot be given on the command line (it takes int, float, bool, str, Optional[...] and Literal[...])")


def convert_settings(func: Callable[..., Any], settings: Mapping[str, str]) -> dict[str, Any]:
    """``--set`` values converted by ``func``'s annotations (``dtype: str`` keeps ``"16"`` a string).

    Raises:
        CLIError: a value that is not of its parameter's type, naming the parameter and the type.
    """
    annotations = _annotations(func)
    converted: dict[str, Any] = {}
    for key, text in settings.items():
        if key not in annotations:
            converted[key] = parse_value(text)
            continue
        try:
            converted[key] = convert_value(text, annotations[key])
        except ValueError as exc:
            raise CLIError(f"--set {key}={text}: parameter '{key}' of {getattr(func, '__name__', 'the function')} is {_type_name(annotations[key])}: {exc}") from None
    return converted


def describe_signature(func: Callable[..., Any]) -> str:
    try:
        return f"{getattr(func, '__name__', 'function')}{inspect.signature(func)}"
    except (TypeError, ValueError):
        return getattr(func, "__name__", "function")


def call_with_kwargs(func: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """Calls ``func(**kwargs)`` after checking it accepts every keyword and gets its required ones.

    Raises:
        CLIError: a keyword the function does not take, a required parameter not supplied, or an
            exception other than a ``GraphBuildError`` raised by the function (chained, so
            ``--verbose`` shows its traceback).
    """
    where = describe_signature(func)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = {n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
        unknown = sorted(set(kwargs) - named) if not takes_any else []
        if unknown:
            raise CLIError(f"{where} takes no parameter {', '.join(repr(u) for u in unknown)} (given with --set or --tp-size)")
        required = [
            n for n, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_ONLY)
            and n not in kwargs
        ]
        if required:
            raise CLIError(f"{where} needs {', '.join(repr(r) for r in required)}; give {'them' if len(required) > 1 else 'it'} with --set NAME=VALUE")
    try:
        return func(**kwargs)
    except GraphBuildError:
        raise
    except SystemExit as exc:
        raise CLIError(f"{where} called sys.exit({exc.code!r}); it must return a network") from exc
    except Exception as exc:
        raise CLIError(f"{where} raised {type(exc).__name__}: {exc}") from exc


def as_networks(result: Any, where: str) -> Network | list[Network]:
    """Checks that a network function returned a ``Network`` or a list of rank-local ones."""
    if isinstance(result, Network):
        return result
    if isinstance(result, (list, tuple)) and result and all(isinstance(n, Network) for n in result):
        return list(result)
    kind = type(result).__name__
    if isinstance(result, (list, tuple)):
        kinds = sorted({type(n).__name__ for n in result}) or ["nothing"]
        kind = f"a {kind} of {', '.join(kinds)}"
    raise CLIError(f"{where} returned {kind}; it must return a gb.Network or a list of rank-local gb.Networks")
