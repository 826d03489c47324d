"""``oca steering -c steering.toml``: run the control-plane steering service."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import orjson

from steering.config import SteeringConfigError, load_steering_config


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="oca steering", description="Run the control-plane steering service."
    )
    ap.add_argument("-c", "--config", required=True, help="steering TOML config file")
    ap.add_argument("--listen", action="append", help="override service.listen (repeatable)")
    ap.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    return ap


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        cfg = load_steering_config(args.config)
    except SteeringConfigError as exc:
        print(f"oca steering: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.listen:
        cfg = dataclasses.replace(
            cfg, service=dataclasses.replace(cfg.service, listen=tuple(args.listen))
        )
    if args.print_config:
        data = dataclasses.asdict(cfg)
        for section in ("urls", "heartbeat"):
            for k in data[section]["keys"]:
                k["secret"] = "<redacted>"
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from steering.service import run_steering

    try:
        return run_steering(cfg)
    except OSError as exc:
        print(f"oca steering: cannot start: {exc}", file=sys.stderr)
        return 3
