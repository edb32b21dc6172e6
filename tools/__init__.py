"""graphbuild's command-line tools (installed as ``graphbuild.tools``).

- ``cli``: the ``graphbuild`` console script with its ``build``, ``run`` and ``inspect`` subcommands
  (one module each: ``build_cmd``, ``run_cmd``, ``inspect_cmd``); also ``python -m graphbuild.tools``.
- ``loader``: loads a network function from ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``.
- ``common``: the CLI's error type, table formatting, atomic writes.
"""
