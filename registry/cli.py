"""``nextstate registry``: inspect versions and change them by hand (operator actions, all audited).

    ls | show vN | canary vN [--fraction F] | promote vN | rollback | reject [vN] | abort
    pin vN | pin --release | history [vN] [--json] | export vN FILE | import FILE | routing | scopes

Every command acts on one learning scope's lineage: ``--scope NAME`` (default ``global``); ``scopes``
lists them all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from proxy.logs import configure_logging
from registry.actions import Control
from registry.errors import RegistryError
from registry.routing import read_table
from registry.settings import RegistrySettings
from registry.transfer import export_version, import_version
from registry.wiring import open_control


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextstate registry", description="Adapter versions and their aliases.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list versions")
    sub.add_parser("routing", help="print the routing table the proxies read")
    sub.add_parser("scopes", help="list the learning scopes with their stable, canary and versions")
    for name, help_ in [("show", "a version's metadata, gate verdict and manifest"),
                        ("promote", "make a version stable now"), ("export", "write a version to a .tar.gz")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("version")
        if name == "export":
            p.add_argument("file", type=Path)
    p = sub.add_parser("canary", help="start a canary for a gated version")
    p.add_argument("version")
    p.add_argument("--fraction", type=float, default=None)
    sub.add_parser("rollback", help="roll back the running canary, else stable to the previous version")
    p = sub.add_parser("reject", help="reject a version (default: the running canary)")
    p.add_argument("version", nargs="?")
    sub.add_parser("abort", help="reject the running canary")
    p = sub.add_parser("pin", help="serve one version to everyone and stop automatic actions")
    p.add_argument("version", nargs="?")
    p.add_argument("--release", action="store_true", help="resume automatic actions")
    p = sub.add_parser("history", help="print the audit log")
    p.add_argument("version", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("import", help="import an exported version as a new candidate")
    p.add_argument("file", type=Path)
    for p in sub.choices.values():
        p.add_argument("--reason", default="", help="why (recorded in the audit log)")
        p.add_argument("--scope", default="global", help="the learning scope whose lineage to act on (default global)")
    return parser


def run(control: Control, args: argparse.Namespace, settings: RegistrySettings) -> int:
    control = control.scoped(args.scope)
    reg, cmd, reason = control.registry, args.command, args.reason
    if cmd == "scopes":
        print(f"{'scope':<20} {'stable':<8} {'canary':<12} {'versions':>8}  serves")
        for name in reg.scopes():
            scoped = reg.scoped(name)
            state = scoped.canary_state()
            stable = scoped.alias("stable")
            if stable:
                serves = scoped.get(stable).served_name
            else:
                serves = "the global stable" if name != "global" else "the base model"
            canary = f"{state.version} {state.fraction:.0%}" if state else "-"
            print(f"{name:<20} {stable or '-':<8} {canary:<12} {len(scoped.versions()):>8}  {serves}")
    elif cmd == "ls":
        aliases = {v: k for k, v in reg.aliases().items() if v}
        canary = reg.canary_state()
        print(f"{'version':<8} {'state':<12} {'alias':<9} {'gate':<5} {'served as':<28} created")
        for info in reg.versions():
            gate = "-" if info.gate is None else ("pass" if info.gate.passed else "fail")
            alias = aliases.get(info.version, "")
            if canary and canary.version == info.version:
                alias = f"canary {canary.fraction:.0%}"
            print(f"{info.version:<8} {info.state:<12} {alias:<9} {gate:<5} {info.served_name:<28} {_when(info.created_at)}")
        if reg.frozen():
            print("pinned: automatic actions are off (`registry pin --release` resumes them)")
    elif cmd == "show":
        info = reg.get(args.version)
        print(json.dumps({"info": info.model_dump(mode="json"), "manifest": reg.manifest(args.version).model_dump(mode="json")},
                         indent=2))
    elif cmd == "routing":
        table = read_table(reg.redis)
        print(table.model_dump_json(indent=2) if table else "no routing table yet (the base model serves everything)")
    elif cmd == "canary":
        default = settings.canary_steps[0] if reg.scope == "global" else settings.personal_canary_fraction
        fraction = args.fraction if args.fraction is not None else default
        control.start_canary(args.version, fraction, "operator", reason)
        print(f"{args.version}: canary at {fraction:.0%}")
    elif cmd == "promote":
        control.promote(args.version, "operator", reason or "promoted by operator")
        print(f"{args.version} is stable")
    elif cmd == "rollback":
        print(f"{control.rollback('operator', reason or 'rolled back by operator')} rolled back; "
              f"stable is {reg.alias('stable') or 'the base model'}")
    elif cmd in ("reject", "abort"):
        print(f"{control.reject(getattr(args, 'version', None), 'operator', reason or f'{cmd} by operator')} rejected")
    elif cmd == "pin":
        if args.release:
            control.release("operator", reason)
            print("automatic actions resumed")
        elif args.version:
            control.pin(args.version, "operator", reason)
            print(f"{args.version} pinned as stable; automatic actions are off")
        else:
            raise RegistryError("name a version to pin, or --release")
    elif cmd == "history":
        for event in reg.history():
            if args.version and event.version != args.version:
                continue
            if args.json:
                print(event.model_dump_json())
            else:
                evidence = json.dumps(event.evidence, separators=(",", ":"), default=str)
                print(f"{_when(event.created_at)}  {event.kind:<18} {event.version or '-':<6} {event.actor:<10} "
                      f"{event.reason}  {evidence}")
    elif cmd == "export":
        print(export_version(reg, args.version, args.file))
    elif cmd == "import":
        info = import_version(reg, args.file)
        print(f"imported as {info.version} (candidate; run `nextstate gate {info.version}`)")
    return 0


def main(argv: list[str] | None = None, settings: RegistrySettings | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings or RegistrySettings()
    configure_logging(settings.log_level, settings.log_json)
    with ExitStack() as stack:
        try:
            return run(open_control(settings, stack), args, settings)
        except (RegistryError, KeyError) as exc:
            print(f"nextstate registry: {exc}", file=sys.stderr)
            return 1
