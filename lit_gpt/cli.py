"""Running a script as a command: its options from a typed function or a dataclass (jsonargparse), and
errors a person can read.

A :class:`lit_gpt.errors.UserError` becomes one line on stderr (printed by rank 0 only, when launched by
torchrun, srun or Fabric) and exit status 2; anything else keeps its traceback, since it is a bug. Warnings
(a shard tail that fills no block, shards without an index) are one ``warning:`` line each.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from jsonargparse import CLI, ActionConfigFile, ArgumentParser

from lit_gpt.errors import UserError

Settings = TypeVar("Settings")


def run(component: Callable[..., Any], then: Callable[[Any], Any] | None = None) -> None:
    """Call ``component`` with the command line's options: a typed function, or a dataclass whose
    instance is then handed to ``then``. Warnings print as one line each, without a line of source."""
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    try:
        if dataclasses.is_dataclass(component):
            then(parse_dataclass(component))
        else:
            CLI(component, as_positional=False)
    except UserError as error:
        if global_rank() == 0:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def global_rank() -> int:
    """This process's rank as torchrun, srun or Fabric's own launcher set it (0 when alone)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


def parse_dataclass(cls: type[Settings], args: Sequence[str] | None = None) -> Settings:
    """An instance of ``cls`` from options named after its fields (``--micro_batch_size 4``) and recipe
    files (``--config recipe.yaml``); ``--help`` shows each field's type, default and docstring."""
    parser = ArgumentParser(description=(cls.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a recipe: YAML with any of the options below")
    parser.add_class_arguments(cls, nested_key=None, as_group=False)
    parsed = parser.instantiate(parser.parse_args(args))
    return cls(**{field.name: getattr(parsed, field.name) for field in dataclasses.fields(cls)})
