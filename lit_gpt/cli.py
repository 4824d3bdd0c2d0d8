"""Running a script as a command: its options from a typed function or a dataclass (jsonargparse), and
errors a person can read.

A :class:`lit_gpt.errors.UserError` becomes one line on stderr and exit status 2: printed by global rank 0
when launched by torchrun, srun or Fabric (every rank raised it alike), or by the one rank that found it
(``UserError.report_here``). Ctrl-C is one line and status 130; output cut short by its reader
(``| head``) ends quietly with status 141, as a shell tool's would; anything else keeps its traceback,
since it is a bug. Warnings (a shard tail that fills no block, shards without an index) are one
``warning:`` line each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import os
import re
import signal
import sys
import warnings
from argparse import Action, ArgumentError
from collections.abc import Callable, Iterator, Sequence
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
    with reported_errors():
        if dataclasses.is_dataclass(component):
            then(parse_dataclass(component))
        else:
            options = dict(as_positional=False, description=summary(component), formatter_class=ReadableTypes)
            parser = capture_parser(lambda: CLI(component, exit_on_error=False, **options))
            check_options(parser, sys.argv[1:])
            try:
                CLI(component, exit_on_error=False, **options)
            except ArgumentError as error:
                raise readable_error(error, parser, sys.argv[1:]) from None
        sys.stdout.flush()  # block-buffered output (a pipe) meets a closed reader here, not at exit


def check_command_line(cls: type) -> None:
    """Answer ``--help`` and refuse a mistaken option or recipe for ``cls`` before a script's heavy imports
    (torch and Lightning take seconds): the script calls this first and parses for real afterwards."""
    with reported_errors():
        parse_dataclass(cls)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """A user's mistake as one line and status 2, Ctrl-C as status 130, a closed reader as status 141."""
    try:
        yield
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
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        sys.exit(141)  # 128 + SIGPIPE


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


# Options that were renamed or removed, with what replaces them: an older recipe or command line gets the
# new name instead of a guess at a typo.
RENAMED = {
    "--eval_iters": "--eval_blocks (sequences of each validation set, the same on any number of devices)",
}


def known_options(parser: ArgumentParser) -> list[str]:
    return sorted({option.split(".")[0] for option in parser._option_string_actions if option.startswith("--")})


def unknown_option(name: str, known: list[str], where: str = "") -> InvalidInput:
    """The one line for an option (``--name``) the command does not have, or a key of the recipe file
    ``where`` names: its replacement if it was renamed, else the closest names."""
    replaced = RENAMED.get(name)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if where:  # a recipe's key, written without the dashes
        name, close = name.removeprefix("--"), [option.removeprefix("--") for option in close]
        replaced = replaced and replaced.removeprefix("--")
    if replaced:
        return InvalidInput(f"{where}{name} was replaced by {replaced}")
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return InvalidInput(
        f"{where}{'unknown key' if where else 'Unknown option'} {name}; {hint}--help lists every option"
    )


def check_options(parser: ArgumentParser, args: Sequence[str]) -> None:
    """Refuse an option the command does not have in one line with the closest names, rather than with
    argparse's whole usage text (nested options such as ``--model_config.n_layer`` count by their first
    part)."""
    known = known_options(parser)
    for arg in args:
        name = arg.split("=", 1)[0].split(".")[0]
        if name.startswith("--") and name not in known:
            raise unknown_option(name, known)


def type_name(text: str) -> str:
    """A type as a user writes it: ``<class 'int'>`` -> int, ``typing.Literal['a', 'b']`` -> one of a, b."""
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text.strip())
    choices = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if choices:
        return "one of " + ", ".join(choice.strip(" '\"") for choice in choices[1].split(","))
    return {"NoneType": "null"}.get(text, re.sub(r"\b(?:[a-z_]+\.)+(?=[A-Z])", "", text))


def readable_error(error: ArgumentError, parser: ArgumentParser, args: Sequence[str]) -> InvalidInput:
    """jsonargparse's several-line report of a value it cannot use, as one line naming the option (or the
    recipe file and key), what it expects and what it got."""
    message = str(error)
    recipes = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--config"]
    where = f"{recipes[-1]}: " if recipes else ""
    key = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.DOTALL)
    if key is None:
        unaccepted = re.search(r"Option '([^']+)' is not accepted", message)
        if unaccepted:  # a key of a recipe file
            return unknown_option(f"--{unaccepted[1]}", known_options(parser), where)
        return InvalidInput(" ".join(message.split()))
    option, detail = f"--{key[1]}", key[2]
    missing = re.search(r"File does not exist: '([^']+)'", detail)
    if missing:
        return InvalidInput(f"{option} {missing[1]}: no such file")
    subtypes = re.search(r"Subtypes: \[(.*)\]\n", detail)
    expected = re.search(r"Expected a (.*?)\. Got value: (.*)", detail, re.DOTALL)
    got = re.search(r"Given value: (.*)", detail)
    required = re.search(r"the following arguments are required: (.*)", detail)
    if subtypes:
        names = " or ".join(type_name(t) for t in re.split(r",\s*(?![^\[]*\])", subtypes[1]))
        value = got[1].strip() if got and "Namespace(" not in got[1] else None
        text = f"{option} expects {names}" + (f", not {value!r}" if value else "")
        return InvalidInput(text + (f" (missing: {required[1].strip()})" if required else ""))
    if expected:
        return InvalidInput(f"{option} expects {type_name(expected[1])}, not {expected[2].strip()!r}")
    return InvalidInput(f"{option}: {' '.join(detail.split())}")


def dataclass_parser(cls: type) -> ArgumentParser:
    """The parser of options named after ``cls``'s fields, and ``--config`` for a recipe file."""
    parser = ArgumentParser(description=summary(cls), formatter_class=ReadableTypes, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a recipe: YAML with any of the options below")
    parser.add_class_arguments(cls, nested_key=None, as_group=False)
    return parser


def parse_dataclass(cls: type[Settings], args: Sequence[str] | None = None) -> Settings:
    """An instance of ``cls`` from options named after its fields (``--micro_batch_size 4``) and recipe
    files (``--config recipe.yaml``); ``--help`` shows each field's type, default and docstring."""
    parser = dataclass_parser(cls)
    args = sys.argv[1:] if args is None else args
    check_options(parser, args)
    try:
        parsed = parser.instantiate(parser.parse_args(args))
    except ArgumentError as error:
        raise readable_error(error, parser, args) from None
    return cls(**{field.name: getattr(parsed, field.name) for field in dataclasses.fields(cls)})
