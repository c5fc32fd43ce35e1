"""The ``cdi`` command: kubectl/virtctl-like access to DataVolumes and their volumes.

Global flags (``--data-dir``, ``-n``, ``--debug``) are accepted before or after the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import TextIO

from cdi.cli.context import CLIError, Context
from cdi.common.errors import CDIError, ValidationError, ValidationErrors

API_VERSION = "cdi.kubevirt.io/v1beta1"


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "t"):
        return True
    if t in ("false", "0", "no", "f"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}; write true or false")


def _globals() -> argparse.ArgumentParser:
    """Flags every command accepts; SUPPRESS keeps a subcommand from resetting a value given earlier."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data dir of the embedded backend (default $CDI_DATA_DIR, else ~/.local/share/cdi)",
    )
    p.add_argument(
        "-n", "--namespace", metavar="NS", default=argparse.SUPPRESS, help='namespace (default "default")'
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print tracebacks of unexpected errors",
    )
    p.add_argument("--no-controller", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def build_parser() -> argparse.ArgumentParser:
    g = _globals()
    parser = argparse.ArgumentParser(
        prog="cdi",
        parents=[g],
        description="Containerized Data Importer: import disk images into volumes (kubectl-like).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, **kw: object) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[g], help=help_, description=help_, **kw)  # type: ignore[arg-type]
        return p

    p = add("apply", "Create or update objects from manifests (files, directories or - for stdin)")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="FILE",
        help="file, directory or - (repeatable)",
    )

    p = add("create", "Create a Secret or a ConfigMap from literals and files")
    csub = p.add_subparsers(dest="create_kind", metavar="KIND")
    ps = csub.add_parser("secret", parents=[g], help="Create a secret")
    ssub = ps.add_subparsers(dest="secret_type", metavar="TYPE")
    pg = ssub.add_parser("generic", parents=[g], help="Create a secret from literals and files")
    pc = csub.add_parser("configmap", aliases=["cm"], parents=[g], help="Create a config map")
    for q in (pg, pc):
        q.add_argument("name", metavar="NAME")
        q.add_argument("--from-literal", action="append", default=[], metavar="KEY=VALUE")
        q.add_argument("--from-file", action="append", default=[], metavar="[KEY=]PATH")
        q.add_argument(
            "--dry-run", nargs="?", const="client", default="none", choices=("none", "client", "server")
        )
        q.add_argument("-o", "--output", default="", choices=("", "yaml", "json", "name"))
    pg.add_argument("--type", default=None, help="secret type (default Opaque)")

    p = add("get", "Display one or many objects")
    p.add_argument("args", nargs="*", metavar="KIND [NAME...]")
    p.add_argument("-o", "--output", default="", help="yaml|json|wide|name|jsonpath=TEMPLATE")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, print changes until Ctrl-C")
    p.add_argument("--no-headers", action="store_true")
    p.add_argument("-A", "--all-namespaces", action="store_true")

    p = add("describe", "Show the details of objects, with conditions and events")
    p.add_argument("args", nargs="*", metavar="KIND [NAME...]")
    p.add_argument("-A", "--all-namespaces", action="store_true")

    p = add("delete", "Delete objects by kind and name, or those in manifests")
    p.add_argument("args", nargs="*", metavar="KIND NAME...")
    p.add_argument("-f", "--filename", action="append", default=[], metavar="FILE")
    p.add_argument(
        "--wait",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        help="wait until the objects are gone (default true)",
    )
    p.add_argument("--timeout", default=None, help="how long --wait waits (default 60s)")
    p.add_argument("--all", action="store_true", help="delete every object of the kind in the namespace")

    p = add("wait", "Wait for a condition on objects")
    p.add_argument("args", nargs="*", metavar="KIND NAME...")
    p.add_argument(
        "--for",
        dest="for_",
        metavar="CONDITION",
        help="condition=Ready[=True|False], jsonpath='{.status.phase}'=Succeeded, delete or create",
    )
    p.add_argument("--timeout", default="30s", help="give up after this long (default 30s)")

    p = add("logs", "Print the log of a DataVolume's importer")
    p.add_argument("args", nargs="+", metavar="[dv] NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the import ends")

    p = add("serve", "Run the controller in the foreground until SIGTERM/SIGINT")
    p.add_argument("--foreground", action="store_true", help="(the default) stay in the foreground")

    p = add("controller", "Manage the background controller daemon")
    ctl = p.add_subparsers(dest="controller_cmd", metavar="ACTION")
    ctl.add_parser("start", parents=[g], help="start the controller daemon if it is not running")
    pst = ctl.add_parser("status", parents=[g], help="show whether the controller daemon runs")
    pst.add_argument("-o", "--output", default="", choices=("", "json"))
    ctl.add_parser("stop", parents=[g], help="stop the controller daemon")

    add("version", "Print the version")
    from cdi.cli import virt

    virt.add_parser(sub, g)
    from cdi.cli import image_upload

    image_upload.add_parser(sub)
    return parser


def _version(ctx: Context) -> int:
    try:
        from importlib.metadata import version

        v = version("pycdi")
    except Exception:
        v = "unknown"
    ctx.print(f"Client Version: pycdi {v}")
    ctx.print(f"API Version: {API_VERSION}")
    return 0


def dispatch(ctx: Context, ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd = ns.command
    if cmd == "apply":
        from cdi.cli import apply

        return apply.run(ctx, ns.filename)
    if cmd == "create":
        from cdi.cli import create

        if ns.create_kind == "secret":
            if ns.secret_type != "generic":
                raise CLIError(
                    "error: only generic secrets are supported: cdi create secret generic NAME ..."
                )
            return create.run_secret(
                ctx, ns.name, ns.from_literal, ns.from_file, ns.type, ns.dry_run, ns.output
            )
        if ns.create_kind in ("configmap", "cm"):
            return create.run_configmap(ctx, ns.name, ns.from_literal, ns.from_file, ns.dry_run, ns.output)
        raise CLIError("error: cdi create supports: secret generic NAME, configmap NAME")
    if cmd == "get":
        from cdi.cli import get

        return get.run(ctx, ns.args, ns.output, ns.watch, ns.no_headers)
    if cmd == "describe":
        from cdi.cli import describe

        return describe.run(ctx, ns.args)
    if cmd == "delete":
        from cdi.cli import delete

        return delete.run(ctx, ns.args, ns.filename, ns.wait, ns.timeout, ns.all)
    if cmd == "wait":
        from cdi.cli import wait

        return wait.run(ctx, ns.args, ns.for_, ns.timeout)
    if cmd == "logs":
        from cdi.cli import logs

        return logs.run(ctx, ns.args, ns.follow)
    if cmd in ("serve", "controller"):
        from cdi.cli import controller

        if cmd == "serve":
            return controller.serve(ctx)
        action = ns.controller_cmd or "status"
        if action == "start":
            return controller.start(ctx)
        if action == "stop":
            return controller.stop(ctx)
        return controller.status(ctx, getattr(ns, "output", ""))
    if cmd == "version":
        return _version(ctx)
    if cmd == "image-upload":
        from cdi.cli import image_upload

        return image_upload.run(ns, ctx)
    if cmd == "virt":
        from cdi.cli import virt

        return virt.run(ctx, ns)
    parser.print_help(ctx.err)
    return 1


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # --help, or a usage error (argparse printed it)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    ctx = Context(
        data_dir_arg=getattr(ns, "data_dir", None),
        namespace_arg=getattr(ns, "namespace", None),
        all_namespaces=bool(getattr(ns, "all_namespaces", False)),
        debug=bool(getattr(ns, "debug", False)),
        no_controller=bool(getattr(ns, "no_controller", False)),
        out=out or sys.stdout,
        err=err or sys.stderr,
    )
    if stop is not None:
        ctx.stop = stop
    try:
        return dispatch(ctx, ns, parser)
    except CLIError as e:
        ctx.eprint(e.message if e.message.startswith(("error:", "Error ")) else f"error: {e.message}")
        return e.code
    except (ValidationErrors, ValidationError) as e:
        ctx.eprint(f"Error from server (Invalid): {e}")
        return 1
    except CDIError as e:
        ctx.eprint(f"Error from server ({e.reason}): {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (cdi get dv | head): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Exception as e:
        if ctx.debug:
            traceback.print_exc(file=ctx.err)
        ctx.eprint(f"error: {type(e).__name__}: {e}")
        if not ctx.debug:
            ctx.eprint("(run with --debug for the traceback)")
        return 1
    finally:
        with contextlib.suppress(Exception):
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
