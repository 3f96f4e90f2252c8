"""``pnp-service import`` and ``claim``: device lists and unclaimed devices turned into declarations, handed
out as a file, a clixon_cli script or a NETCONF body."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .common import UsageError, datastore_arguments, open_store, positive, read_text, step_registry, template_context, write_private

log = logging.getLogger("pnp_service")


def _check_output_flags(args: argparse.Namespace) -> None:
    if args.merge and not args.output:
        raise UsageError("--merge goes with --output FILE.xml (the declarations file to add to)")
    if args.replace and args.output and not args.merge:
        raise UsageError("--replace goes with --merge (replace serials the file declares), --clixon-cli or --netconf")


def _template_dirs(args: argparse.Namespace, beside: str) -> list[str]:
    """Where ``config/template-file`` names are checked: --template-dir; for a controller (--clixon-cli,
    --netconf, --clixon-socket) where its service module reads them ($PNP_TEMPLATE_DIRS, else
    /usr/local/share/pnp-service/templates: a file beside the list would pass here and fail the commit); else
    templates/ beside the output file (where ``serve`` will look), or beside ``beside``."""
    from ..planner import controller_template_dirs

    if args.template_dir:
        return list(args.template_dir)
    if args.clixon_cli or args.netconf or getattr(args, "clixon_socket", None):
        return controller_template_dirs(os.environ)
    return [os.path.join(os.path.dirname(os.path.abspath(args.output or beside)), "templates")]


def _deliver(args: argparse.Namespace, imported, what: str, origin: str) -> int:
    """Hand the checked declarations out the way the flags ask; none of them: only the summary (claim: the XML).

    ``what`` names the input in messages, ``origin`` the command in the comment heading a written file or script.
    """
    from .. import importer

    declarations = [item.declaration for item in imported]
    count = f"{len(declarations)} device{'s' if len(declarations) != 1 else ''}"
    # An XML comment cannot hold "--": say the option's name without its dashes.
    comment = (f"Written by {origin}: {count}.  Check it after every edit: pnp-service check, with this file "
               "as its datastore." if args.output else
               f"{origin}: {count}.  Review, then paste into clixon_cli (or clixon_cli -f CONFIG < THIS-FILE).")
    if args.output:
        if os.path.lexists(args.output):
            if not args.merge:
                raise UsageError(f"{args.output} exists already: --merge adds to it (and --replace replaces the "
                                 "serials it declares); pnp-service never overwrites a declarations file otherwise")
            with open(args.output, "rb") as handle:
                existing = handle.read()
            merged = importer.merge_into(existing, args.output, imported, replace=args.replace)
            if merged.added or merged.replaced:
                write_private(args.output, merged.data, exclusive=False)
            kept = (f", {len(merged.kept)} already declared and kept as they are (--replace replaces them: "
                    f"{' '.join(merged.kept[:5])}{' ...' if len(merged.kept) > 5 else ''})") if merged.kept else ""
            state = "merged into" if merged.added or merged.replaced else "nothing to change in"
            print(f"{state} {args.output}: {len(merged.added)} added, {len(merged.replaced)} replaced{kept}")
            return 0
        if args.merge:
            raise UsageError(f"--merge: {args.output} does not exist (leave out --merge to create it)")
        write_private(args.output, importer.declarations_document(declarations, comment), exclusive=True)
        print(f"wrote {args.output} (mode 0600): {count} from {what}; serve it: "
              f"pnp-service serve --datastore {args.output}")
        return 0
    if args.clixon_cli:
        sys.stdout.write(importer.clixon_cli_script(imported, replace=args.replace, comment=comment,
                                                    commit_every=args.commit_every))
        print(f"pnp-service {args.command}: {count} from {what}, as a clixon_cli script: review it, then paste it "
              "into clixon_cli (or clixon_cli -f CONFIG < FILE)", file=sys.stderr)
        return 0
    if args.netconf:
        sys.stdout.write(importer.netconf_config(declarations, replace=args.replace))
        print(f"pnp-service {args.command}: {count} from {what}, as the <config> of an edit-config on the candidate; "
              "commit after it", file=sys.stderr)
        return 0
    if args.command == "claim":
        sys.stdout.write(importer.declarations_fragment(declarations))
        print(f"pnp-service claim: {count}; add them under <services> in your declarations file "
              "(or give --output FILE --merge, or --clixon-cli)", file=sys.stderr)
        return 0
    print(f"{what}: {count}, valid and planned; nothing written "
          "(--output FILE.xml writes a declarations file, --clixon-cli or --netconf prints them for a controller)")
    return 0


def _failed(args: argparse.Namespace, exc) -> int:
    for line in exc.lines():
        print(f"pnp-service {args.command}: {line}", file=sys.stderr)
    problems = len(exc.problems)
    print(f"pnp-service {args.command}: nothing written ({problems} problem{'s' if problems != 1 else ''})",
          file=sys.stderr)
    return 1


def cmd_import(args: argparse.Namespace) -> int:
    from .. import importer
    from ..planner import file_template_loader

    _check_output_flags(args)
    kind = args.format or {".csv": "csv", ".yaml": "yaml", ".yml": "yaml"}.get(os.path.splitext(args.file)[1].lower())
    if kind is None:
        raise UsageError(f"{args.file}: is it CSV or YAML? name it .csv, .yaml or .yml, or give --format")
    try:
        groups = importer.load_groups(read_text(args.groups, "groups file"), args.groups) if args.groups else None
        text = read_text(args.file, "device list")
        read = importer.devices_from_csv if kind == "csv" else importer.devices_from_yaml
        imported = read(text, args.file, groups)
        if not imported:
            raise importer.ImportFailed([importer.Problem(importer.Where(args.file), "no devices in it")])
        importer.verify(imported, args.file, file_template_loader(_template_dirs(args, args.file)), step_registry().names(),
                        template_context(args))
        return _deliver(args, imported, args.file, f"pnp-service import {os.path.basename(args.file)}")
    except importer.ImportFailed as exc:
        return _failed(args, exc)


def cmd_claim(args: argparse.Namespace) -> int:
    from .. import importer
    from ..planner import file_template_loader

    _check_output_flags(args)
    if args.group and not args.groups:
        raise UsageError("--group needs --groups FILE.yaml, the file that defines the groups")
    if args.hostname and len(args.serial) > 1:
        raise UsageError("--hostname names one device: claim one serial at a time with it")
    where = args.clixon_socket or args.datastore
    store = open_store(args, read_only=True)
    try:
        records = [store.load(serial) for serial in dict.fromkeys(args.serial)]
    finally:
        store.close()
    refused = []
    for record in records:
        if record.unclaimed is not None:
            continue
        if record.declaration is not None:
            refused.append(f"{record.serial} is declared already (in {where}), not unclaimed")
        else:
            refused.append(f"{record.serial} is not unclaimed: it has not called in without a declaration "
                           "(pnp-service status lists the unclaimed devices)")
    if refused:
        for message in refused:
            print(f"pnp-service claim: {message}", file=sys.stderr)
        return 1
    try:
        groups = importer.load_groups(read_text(args.groups, "groups file"), args.groups) if args.groups else None
        imported = importer.claimed([r.unclaimed for r in records if r.unclaimed is not None], groups, args.group or (),
                                    args.hostname or "", args.template_file or "", args.var)
        beside = where if not args.clixon_socket else os.path.join(os.getcwd(), "claim")
        importer.verify(imported, "claim", file_template_loader(_template_dirs(args, beside)), step_registry().names(),
                        template_context(args))
        serials = " ".join(r.serial for r in records)
        return _deliver(args, imported, f"claim {serials}", f"pnp-service claim {serials}")
    except importer.ImportFailed as exc:
        return _failed(args, exc)


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where import and claim hand the declarations: a file, a clixon_cli script or a NETCONF body."""
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="FILE.xml", help="write a declarations file (atomically, mode 0600); "
                     "an existing file only with --merge")
    out.add_argument("--clixon-cli", action="store_true",
                     help="print a clixon_cli script (configure, set services pnp-device ..., commit) to review and paste")
    out.add_argument("--netconf", action="store_true",
                     help="print the <config> of a NETCONF edit-config on the candidate")
    parser.add_argument("--commit-every", type=positive, default=1000, metavar="N",
                        help="with --clixon-cli: a commit after every N devices, so each commit ends within the "
                        "controller's service-timeout (default: %(default)s)")
    parser.add_argument("--merge", action="store_true", help="with --output: add to the existing declarations file, "
                        "keeping its other declarations and its comments; serials it declares are kept as they are")
    parser.add_argument("--replace", action="store_true",
                        help="replace serials already declared: in the file with --merge; --clixon-cli deletes each "
                        "one first; --netconf uses operation replace instead of create")
    parser.add_argument("--controller-ssh-key", metavar="FILE", help="the SSH public key serve (or the service "
                        "module) will give templates, to check templates that use it")
    parser.add_argument("--template-dir", action="append", metavar="DIR",
                        help="where config template-file names are found to check them (repeatable; default: "
                        "templates/ beside --output, else beside the input)")


def add_parsers(command) -> None:
    """Add this module's commands; ``command(name, help, description)`` makes each subparser."""
    imported = command("import", "turn a CSV or YAML device list into declarations",
                       "Read a device list (CSV or YAML, with defaults and groups), check every device against the "
                       "YANG and plan it, and hand the declarations out: a declarations file (--output), a clixon_cli "
                       "script (--clixon-cli) or a NETCONF edit-config body (--netconf).  Nothing is written when any "
                       "device is wrong; each problem names the file, the line and the field.  See docs/import.md.")
    imported.add_argument("file", metavar="FILE.csv|FILE.yaml", help="the device list")
    imported.add_argument("--format", choices=["csv", "yaml"], help="the list's format (default: from the file name)")
    imported.add_argument("--groups", metavar="FILE.yaml",
                          help="a YAML file of defaults: and groups: (name -> fields) that devices name in group")
    _output_arguments(imported)
    imported.set_defaults(func=cmd_import)

    claim = command("claim", "declare devices that called in unclaimed",
                    "Turn unclaimed devices (they called in without a declaration) into declarations: their serial and "
                    "the PID they reported, with defaults and groups from --groups.  Printed as <pnp-device> XML to "
                    "add to your declarations file unless --output, --clixon-cli or --netconf says otherwise; "
                    "your file is written only with --output FILE --merge.")
    datastore_arguments(claim)
    claim.add_argument("serial", nargs="+", help="serial of an unclaimed device (see pnp-service status)")
    claim.add_argument("--groups", metavar="FILE.yaml", help="a YAML file of defaults: and groups: (as for import)")
    claim.add_argument("--group", action="append", metavar="G",
                       help="a group of --groups to apply (repeatable, applied in order, e.g. site then role)")
    claim.add_argument("--hostname", metavar="H", help="the device's hostname (one serial only)")
    claim.add_argument("--template-file", metavar="NAME", help="its configuration template, a file in the template "
                       "folder (templates/ beside the declarations file; under a controller the service module's)")
    claim.add_argument("--var", action="append", default=[], metavar="NAME[:TYPE]=VALUE",
                       help="a template variable (repeatable; TYPE number, boolean or list as in a CSV header)")
    _output_arguments(claim)
    claim.set_defaults(func=cmd_claim)
