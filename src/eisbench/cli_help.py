"""How the ``eisbench`` command line talks: its help layout (examples kept as written,
defaults shown), the parser that suggests the closest flag or command for a typo, ``--version``,
and the one-line descriptions of ``eisbench list``.

Example:
    >>> p = Parser(prog="demo")
    >>> _ = p.add_argument("--quick", action="store_true", help="the quick preset")
    >>> parse(p, ["--qick"])  # doctest: +SKIP
    usage: demo [-h] [--quick]
    demo: error: unrecognized argument --qick; did you mean --quick?
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

EXAMPLES: dict[str, tuple[str, ...]] = {
    "eisbench": ("eisbench run features-vs-bugs --out runs/quick",
                 "eisbench attack --help",
                 "eisbench list"),
    "run": ("eisbench run features-vs-bugs --out runs/quick",
            "eisbench run goh-linear --data digits --seeds 2 --out runs/goh-linear",
            "eisbench run ilyas --full --set n_construct=5000 --dry-run"),
    "bench": ("eisbench bench trojans --data mnist --out runs/trojans",
              "eisbench bench edit --full --out runs/edit",
              "eisbench bench replace --dry-run"),
    "train": ("eisbench train --data digits --arch mlp --epochs 10 --out ckpt/digits",
              "eisbench train --arch cnn-small --method fast-at --epochs 10 --eps 0.3 "
              "--out ckpt/robust"),
    "attack": ("eisbench attack --checkpoint ckpt/robust --eps 0.3 --control ckpt/standard",
               "eisbench attack --checkpoint ckpt/digits --data digits --attack pgd --steps 50 "
               "--restarts 10 --eps 0.1",
               "eisbench attack --model mypkg.nets:Net --weights net.pt --scale 255 --eps 0.3 "
               "--out runs/attack"),
    "scan": ("eisbench scan --checkpoint ckpt/digits --data digits --out runs/scan",
             "eisbench scan --model mypkg.nets:Net --weights net.pt --method tabor "
             "--out runs/scan"),
    "replace": ("eisbench replace --checkpoint ckpt/digits --data digits --distillers tree "
                "--out runs/replace",
                "eisbench replace --model mypkg.nets:Net --weights net.pt --out runs/replace"),
    "audit": ("eisbench audit --checkpoint ckpt/digits --data digits --out runs/audit",
              "eisbench audit --model mypkg.nets:Net --weights net.pt --full --out runs/audit",
              "eisbench audit --checkpoint ckpt/digits --data digits --set n_robust=1000 "
              "--dry-run"),
    "data": ("eisbench data fetch mnist",
             "eisbench data fetch fashion-mnist --data-root /usr/share/datasets/fashion-mnist"),
    "fetch": ("eisbench data fetch mnist",
              "eisbench data fetch cifar10 --data-root ~/datasets/cifar-10-batches-py"),
    "cache": ("eisbench cache verify", "eisbench cache gc --dry-run"),
    "verify": ("eisbench cache verify", "eisbench cache verify --data"),
    "gc": ("eisbench cache gc --dry-run", "eisbench cache gc"),
    "list": ("eisbench list", "eisbench list | grep -A8 '^attacks'"),
}
"""Each command's examples, shown at the end of its ``--help`` (tests parse every line)."""


def epilog(command: str) -> str:
    """The examples of ``command`` as a help epilog."""
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


def add_command(sub: Any, name: str, *, help: str) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` to the subparsers ``sub``: ``help`` is its line in the
    parent's help and the top of its own, which ends with its :data:`EXAMPLES`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=textwrap.fill(help, width=88), epilog=epilog(name))
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description and the examples as written and shows every flag's default,
    except where there is none to show (None, False) or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == []
        if (nothing or action.default == argparse.SUPPRESS or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`HelpFormatter`, no abbreviated flags (``--seed``
    must not silently mean ``--seeds``) and the closest choice for a mistyped command or
    choice; :func:`parse` adds the closest flag for a mistyped one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1,
                                          cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(map(str, choices))
        if isinstance(action, argparse._SubParsersAction):
            self.error(f"unknown command {value!r}{hint} (commands: {listed})")
        raise argparse.ArgumentError(action, f"invalid choice {value!r}{hint} (choose from "
                                     f"{listed})")


def chosen(parser: argparse.ArgumentParser, ns: argparse.Namespace
            ) -> argparse.ArgumentParser:
    """The (sub)parser that parsed the last command named in ``ns``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(ns, action.dest, None)
            if name in action.choices:
                return chosen(action.choices[name], ns)
    return parser


def unrecognized(extras: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """The error for arguments ``parser`` does not take, with the closest flag of each
    mistyped one.

    Example:
        >>> p = Parser(prog="demo")
        >>> _ = p.add_argument("--quick", action="store_true", help="the quick preset")
        >>> unrecognized(["--qick"], p)
        'unrecognized argument --qick; did you mean --quick?'
    """
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    typos = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
    hints = {t: difflib.get_close_matches(t, flags, n=1, cutoff=0.6) for t in typos}
    found = [(t, c[0]) for t, c in hints.items() if c]
    text = f"unrecognized argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}"
    if len(found) == 1 and len(typos) == 1:
        return f"{text}; did you mean {found[0][1]}?"
    if found:
        return f"{text}; did you mean " + ", ".join(f"{c} (for {t})" for t, c in found) + "?"
    return text


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that an unknown argument is reported by the
    subcommand that was given it (its usage, the closest flag), not by the top level."""
    ns, extras = parser.parse_known_args(argv)
    if extras:
        leaf = chosen(parser, ns)
        leaf.error(unrecognized(extras, leaf))
    return ns


class VersionAction(argparse.Action):
    """``--version``: the package version and, in a git checkout, the commit (read only when
    asked, so parsing stays free of subprocesses)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> NoReturn:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """``eisbench 0.1.0 (git 1a2b3c4d, modified)``; the git part only in a checkout."""
    from eisbench.core.version import VERSION
    from eisbench.runs.record import git_state

    git = git_state()
    if not git.get("sha"):
        return f"eisbench {VERSION}"
    return (f"eisbench {VERSION} (git {str(git['sha'])[:10]}"
            + (", modified" if git.get("dirty") else "") + ")")


_NOT_AN_END = re.compile(r"(\bet al|\be\.g|\bi\.e|\bcf|\bvs|\bFig|\b[A-Z])$")
"""Words before a full stop that do not end a sentence ("Ilyas et al. 2019")."""


def first_line(text: str, *, width: int = 100) -> str:
    """The first sentence of ``text``'s first paragraph, at most ``width`` characters.

    Example:
        >>> first_line("Madry et al. 2018's CNN. Two convs.\\n\\nLonger text.")
        "Madry et al. 2018's CNN."
    """
    para = " ".join(text.strip().split("\n\n")[0].split())
    end = next((m.end() for m in re.finditer(r"\.\s", para)
                if not _NOT_AN_END.search(para[:m.start()])), len(para))
    line = para[:end].strip()
    return line if len(line) <= width else line[:width - 3].rstrip() + "..."


def describe(obj: Any, meta: Mapping[str, Any]) -> str:
    """One line on a registered object: its ``summary`` or ``description``, else its
    docstring's first sentence (functions and classes only: an instance's docstring is its
    class's), else the names of an attack suite's steps, else its metadata."""
    for attr in ("summary", "description"):
        text = getattr(obj, attr, None)
        if isinstance(text, str) and text:
            return first_line(text)
    if inspect.isroutine(obj) or inspect.isclass(obj):
        doc = inspect.getdoc(obj)
        if doc:
            return first_line(doc)
    if isinstance(obj, tuple) and all(isinstance(s, tuple) and s and isinstance(s[0], str)
                                      for s in obj):
        return "attacks: " + ", ".join(s[0] for s in obj)
    return ", ".join(f"{k}={v}" for k, v in meta.items() if k != "params")


__all__ = ["EXAMPLES", "HelpFormatter", "Parser", "VersionAction", "add_command", "chosen",
           "describe", "epilog", "first_line", "parse", "unrecognized", "version_line"]
