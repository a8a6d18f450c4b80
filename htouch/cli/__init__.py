"""The `htouch` command line: a thin layer that parses arguments and calls the library.

Each command group lives in its own module and registers itself on `app`. User errors (HtouchError)
print one red line and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from htouch.cli.common import console, err_console, state
from htouch.errors import HtouchError

app = typer.Typer(
    name="htouch",
    help="Record, check and learn from robot demonstrations with contact microphones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")) -> None:
    state.debug = debug


# Command modules register themselves on `app` when imported, in the order `htouch --help` lists them: the
# dataset tools, then recording, then learning, then moving data in and out.
COMMAND_MODULES = ("dataset_cmds", "validate_cmd", "derived_cmds", "inspect_cmd", "collect_cmd", "replay_cmd",
                   "train_cmd", "eval_cmd", "diagnostics_cmd", "export_cmd", "view_cmd")
for _module in COMMAND_MODULES:
    importlib.import_module(f"htouch.cli.{_module}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Typer handles usage errors itself (exit 2); ours are turned into one line."""
    try:
        app(args=argv, prog_name="htouch")
    except HtouchError as e:
        if state.debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # the disk or the file system said no (full, read-only, ...): the user's to fix
        if state.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        err_console.print(f"[bold red]error:[/] {escape(where + (e.strerror or str(e)))}", highlight=False,
                          soft_wrap=True)
        sys.exit(2)
    except Exception as e:  # a bug, not the user's fault: still one line unless --debug
        if state.debug:
            raise
        from htouch.dataset.location import is_storage_error

        if is_storage_error(e):  # a dataset at a URL: the storage said no (credentials, network, ...)
            err_console.print(f"[bold red]error:[/] reading from storage failed: {type(e).__name__}: "
                              f"{escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
                          "(run with --debug for details)",
                          highlight=False, soft_wrap=True)
        sys.exit(3)


__all__ = ["app", "main", "console"]
