"""The ``oca`` command line: one console script, many subcommands.

Exit codes: 0 success, 1 the operation failed (e.g. verify found bad objects),
2 bad usage or bad configuration, 3 startup failure (cannot bind, cannot open store).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from oca import __version__
from oca.config import Config, config_to_dict, load_auth_keys, load_config, parse_listen
from oca.errors import ConfigError, OcaError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3

log = logging.getLogger("oca.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", required=required, help="appliance TOML config file")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration as JSON and exit")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="oca", description="Video edge cache appliance.")
    ap.add_argument("--version", action="version", version=f"oca {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the appliance data plane (foreground)")
    _add_config(p)
    p.add_argument("--workers", type=int, help="override server.workers")
    p.add_argument("--listen", action="append", help="override server.listen (repeatable)")

    st = sub.add_parser("store", help="inspect and load the object store")
    ssub = st.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    p = ssub.add_parser("import", help="load a local tree into the store")
    _add_config(p)
    p.add_argument("directory")
    p.add_argument("--tier", help="place on this tier (default: the first)")
    p = ssub.add_parser("ls", help="list stored objects")
    _add_config(p)
    p.add_argument("--json", action="store_true")
    p = ssub.add_parser("rm", help="remove objects from the store")
    _add_config(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p = ssub.add_parser("verify", help="re-hash every object; quarantine mismatches")
    _add_config(p)
    p.add_argument("--no-quarantine", action="store_true", help="report only")

    p = sub.add_parser("fill", help="run one fill cycle from the fill manifest")
    _add_config(p)
    p.add_argument("--now", action="store_true", help="ignore the fill window")
    p.add_argument("--manifest", help="manifest URL or file (default fill.manifest)")
    p.add_argument(
        "--tiers-only",
        action="store_true",
        help="only move objects between tiers by their recent requests",
    )

    p = sub.add_parser("drain", help="take this appliance out of steering; players keep playing")
    _add_config(p)
    p.add_argument("--undrain", action="store_true", help="put it back into steering")

    p = sub.add_parser("status", help="live view of this appliance: traffic, hits, disks, fill")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print one JSON document and exit")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between the samples rates come from (default 2)")  # fmt: skip

    p = sub.add_parser("sign", help="print a signed URL for PATH on this appliance")
    _add_config(p)
    p.add_argument("path")
    p.add_argument(
        "--ttl", type=int, help="seconds until expiry (default auth.default_ttl_seconds)"
    )
    p.add_argument("--client", help="bind the token to this client IP or CIDR prefix")
    p.add_argument("--prefix", help="path prefix the token covers (default: PATH's directory)")
    p.add_argument("--key-id", help="signing key id (default auth.signing_key_id or first key)")
    p.add_argument("--base-url", help="scheme://host:port to put in front (default: listener)")

    p = sub.add_parser(
        "demo", help="run an origin, two sites of appliances and steering on 127.0.0.1"
    )
    p.add_argument("--dir", default="", help="working directory (default: a temporary one)")
    p.add_argument("--port", type=int, default=8080,
                   help="first of six consecutive ports: the player page, steering, the "
                        "origin, a1, a2, b1 (0 = any free ports)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="worker processes per appliance")
    p.add_argument("--print-configs", action="store_true",
                   help="print the generated config files and exit")  # fmt: skip

    p = sub.add_parser("steering", help="run the control-plane steering service", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    cat = sub.add_parser("catalog", help="build/update the catalog from DASH packages")
    csub = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    for action, help_text in (("build", "write a new catalog"), ("add", "add/replace titles")):
        p = csub.add_parser(action, help=help_text)
        if action == "build":
            p.add_argument("--out", required=True, help="catalog file to write")
        else:
            p.add_argument("--catalog", required=True, help="catalog file to update")
        p.add_argument("--url-prefix", default="/", help="URL path of a directory SOURCE")
        p.add_argument("--origin", action="append", default=[],
                       help="origin base URL serving directory SOURCEs (repeatable)")  # fmt: skip
        p.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="directory of DASH packages or http(s) MPD URL")  # fmt: skip
    p = csub.add_parser("ls", help="list the titles of a catalog")
    p.add_argument("--catalog", required=True, help="catalog file to read")
    p.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="benchmarks (see bench/)")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    p = bsub.add_parser("serve", help="serving throughput against nginx", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = bsub.add_parser(
        "cache-policy", help="hit ratios of the cache policy against libcachesim's", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = bsub.add_parser(
        "steering", help="steering decisions/s in process and over HTTP", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = bsub.add_parser(
        "miss", help="time to first byte of misses and a 100-client popular miss", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = bsub.add_parser(
        "load", help="throughput with 10,000 idle and slowloris connections held", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    return ap


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "serve"]:
        # The benchmark owns its own options (argparse.REMAINDER drops "-x" ones).
        from bench.serve import main as bench_main

        return bench_main(argv[2:])
    if argv[:2] == ["bench", "miss"]:
        from bench.miss import main as miss_main

        return miss_main(argv[2:])
    if argv[:2] == ["bench", "load"]:
        from bench.load import main as load_main

        return load_main(argv[2:])
    if argv[:2] == ["bench", "steering"]:
        from bench.steering import main as steering_bench_main

        return steering_bench_main(argv[2:])
    if argv[:1] == ["steering"]:
        # The control plane has its own config file; it shares only the console script.
        from steering.cli import main as steering_main

        return steering_main(argv[1:])
    if argv[:2] == ["bench", "cache-policy"]:
        from bench.cache_policy import main as cache_policy_main

        return cache_policy_main(argv[2:])
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"oca: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OcaError as exc:
        print(f"oca: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "demo":
        from oca.demo import run_demo

        return run_demo(args.dir, args.port, args.workers, args.print_configs)
    if cmd == "catalog":
        from steering.catalog_cli import run_catalog

        return run_catalog(args)
    overrides: dict[str, Any] = {}
    if cmd == "serve":
        if args.workers is not None:
            overrides["server.workers"] = args.workers
        if args.listen:
            overrides["server.listen"] = args.listen
    cfg = _load(args, overrides)
    if getattr(args, "print_config", False):
        sys.stdout.write(orjson.dumps(config_to_dict(cfg), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return EXIT_OK
    _setup_logging(cfg.server.log_level)
    if cmd == "serve":
        from oca.server.supervisor import run_server

        if not cfg.auth.keys and not cfg.auth.keys_file:
            log.warning("NO [auth] KEYS CONFIGURED: serving every object to anyone without "
                        "a signed URL; configure [auth] keys for production")  # fmt: skip
        return run_server(cfg, overrides)
    if cmd == "fill":
        # The fill package builds on this one; imported here so `oca serve` never loads it.
        from fill.run import run_fill, run_tiers_only

        if args.tiers_only:
            return run_tiers_only(cfg)
        return run_fill(cfg, now=args.now, manifest_source=args.manifest)
    if cmd == "store":
        from oca.storage import commands

        if args.store_command == "import":
            return commands.run_import(cfg.storage, args.directory, sys.stdout, tier=args.tier)
        if args.store_command == "ls":
            return commands.run_ls(cfg.storage, sys.stdout, as_json=args.json)
        if args.store_command == "rm":
            return commands.run_rm(cfg.storage, args.paths, sys.stdout)
        return commands.run_verify(cfg.storage, sys.stdout, quarantine=not args.no_quarantine)
    if cmd == "sign":
        return _sign(cfg, args)
    if cmd == "drain":
        from oca.health.flags import run_drain

        return run_drain(cfg, undrain=args.undrain, out=sys.stdout)
    if cmd == "status":
        from oca.status import run_status

        return run_status(cfg, as_json=args.json, interval=args.interval, out=sys.stdout)
    raise AssertionError(cmd)  # pragma: no cover


def _sign(cfg: Config, args: argparse.Namespace) -> int:
    from oca.auth.tokens import signed_path

    keys = load_auth_keys(cfg.auth)
    if not keys:
        raise ConfigError("auth.keys", "no signing keys configured; `oca sign` needs [auth] keys")
    kid = args.key_id or cfg.auth.signing_key_id or keys[0].id
    by_id = {k.id: k for k in keys}
    if kid not in by_id:
        raise ConfigError("auth.signing_key_id", f"key {kid!r} is not configured")
    if not args.path.startswith("/"):
        print("oca sign: PATH must start with /", file=sys.stderr)
        return EXIT_CONFIG
    if args.client:
        try:
            ipaddress.ip_network(args.client, strict=False)
        except ValueError:
            print(f"oca sign: --client {args.client!r} is not an IP address or prefix",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
    ttl = args.ttl if args.ttl is not None else cfg.auth.default_ttl_seconds
    if ttl <= 0:
        print("oca sign: --ttl must be positive", file=sys.stderr)
        return EXIT_CONFIG
    expires = int(time.time()) + ttl
    path = signed_path(kid, bytes.fromhex(by_id[kid].secret), args.path, expires,
                       prefix=args.prefix, client=args.client)  # fmt: skip
    print(_base_url(cfg, args.base_url) + path)
    return EXIT_OK


def _base_url(cfg: Config, explicit: str | None) -> str:
    if explicit:
        return explicit.rstrip("/")
    if cfg.auth.public_url:
        return cfg.auth.public_url.rstrip("/")
    run = os.path.join(cfg.server.state_dir, "run", "listeners.json")
    try:
        with open(run, "rb") as fh:
            for item in orjson.loads(fh.read())["listeners"]:
                if item["kind"] in ("http", "https"):
                    return str(item["url"])
    except (OSError, ValueError, KeyError):
        pass
    if cfg.server.listen:
        host, port = parse_listen(cfg.server.listen[0])
        return f"http://{host}:{port}"
    host, port = parse_listen(cfg.tls.listen[0])
    return f"https://{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
