"""Running a script as a command: its options from a typed function or a dataclass (jsonargparse), and
errors a person can read.

A :class:`lit_gpt.errors.UserError` becomes one line on stderr and exit status 2: printed by global rank 0
when launched by torchrun, srun or Fabric (every rank raised it alike), or by the one rank that found it
(``UserError.report_here``). Ctrl-C is one line and status 130; anything else keeps its traceback, since
it is a bug. Warnings (a shard tail that fills no block, shards without an index) are one ``warning:``
line each.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import signal
import sys
import warnings
from argparse import Action
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from jsonargparse import CLI, ActionConfigFile, ArgumentParser, DefaultHelpFormatter, capture_parser

from lit_gpt.errors import InvalidInput, UserError

Settings = TypeVar("Settings")


def run(component: Callable[..., Any], then: Callable[[Any], Any] | None = None) -> None:
    """Call ``component`` with the command line's options: a typed function, or a dataclass whose
    instance is then handed to ``then``. Warnings print as one line each, without a line of source."""
    warnings.formatwarning = lambda message, category, *_: f"warning: {message}\n"
    try:
        if dataclasses.is_dataclass(component):
            then(parse_dataclass(component))
        else:
            options = dict(as_positional=False, description=summary(component), formatter_class=ReadableTypes)
            check_options(capture_parser(lambda: CLI(component, **options)), sys.argv[1:])
            CLI(component, **options)
    except UserError as error:
        # Leaving anyway: a launcher's SIGTERM (torchrun ends the other workers when the first exits) must
        # not turn this rank's status 2 into a kill on its way out.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if global_rank() == 0 if error.report_here is None else error.report_here:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a command with work to keep says where it stands before this
        if global_rank() == 0:
            print("Interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


def load_script(path: Path) -> ModuleType:
    """A script of the repository (pretrain/, scripts/) as a module, to call its functions without
    running its command."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def global_rank() -> int:
    """This process's rank as torchrun, srun or Fabric's own launcher set it (0 when alone)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


class ReadableTypes(DefaultHelpFormatter):
    """``--help`` types as written in the code: ``Path``, not ``<class 'Path'>`` (jsonargparse spells
    classes it does not know that way)."""

    def _get_type_str(self, action: Action) -> str | None:
        text = super()._get_type_str(action)
        return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text) if text else text


def summary(component: Callable[..., Any]) -> str:
    """The first paragraph of a docstring, as ``--help`` opens (jsonargparse would take its first line)."""
    return " ".join((component.__doc__ or "").split("\n\n")[0].split())


def check_options(parser: ArgumentParser, args: Sequence[str]) -> None:
    """Refuse an option the command does not have in one line with the closest names, rather than with
    argparse's whole usage text (nested options such as ``--model_config.n_layer`` count by their first
    part)."""
    known = sorted({option.split(".")[0] for option in parser._option_string_actions if option.startswith("--")})
    for arg in args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name.split(".")[0] not in known:
            close = difflib.get_close_matches(name.split(".")[0], known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise InvalidInput(f"Unknown option {name}; {hint}--help lists every option")


def dataclass_parser(cls: type) -> ArgumentParser:
    """The parser of options named after ``cls``'s fields, and ``--config`` for a recipe file."""
    parser = ArgumentParser(description=summary(cls), formatter_class=ReadableTypes)
    parser.add_argument("--config", action=ActionConfigFile, help="a recipe: YAML with any of the options below")
    parser.add_class_arguments(cls, nested_key=None, as_group=False)
    return parser


def parse_dataclass(cls: type[Settings], args: Sequence[str] | None = None) -> Settings:
    """An instance of ``cls`` from options named after its fields (``--micro_batch_size 4``) and recipe
    files (``--config recipe.yaml``); ``--help`` shows each field's type, default and docstring."""
    parser = dataclass_parser(cls)
    check_options(parser, sys.argv[1:] if args is None else args)
    parsed = parser.instantiate(parser.parse_args(args))
    return cls(**{field.name: getattr(parsed, field.name) for field in dataclasses.fields(cls)})
