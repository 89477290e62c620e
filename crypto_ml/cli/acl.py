"""``crypto-ml acl``: the Redis users of crypto_ml.core.acl -- print or write their template,
make passwords, show the rules."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crypto_ml.cli.helptext import help_texts
from crypto_ml.cli.options import EXIT_OK
from crypto_ml.core import acl


def add_parser(sub: Any) -> None:
    """``acl template|write|passwords|table``."""
    parser = sub.add_parser("acl", help="Redis ACL users: template, passwords, rules",
                            **help_texts("acl"))
    acl_sub = parser.add_subparsers(dest="acl_command", required=True,
                                    metavar="{template,write,passwords,table}")
    acl_sub.add_parser("template", help="print the ACL template compose and Kubernetes ship")
    acl_sub.add_parser("write", help="rewrite the shipped templates from crypto_ml/core/acl.py")
    acl_sub.add_parser("passwords", help="print a fresh password per user, as KEY=VALUE lines "
                                         "for .env (compose) or k8s/base/secrets.env")
    acl_sub.add_parser("table", help="print each user's purpose and rules")
    parser.set_defaults(run=acl_main, log_level="warning", log_format=None, interrupted=None)


def acl_main(args: argparse.Namespace) -> int:
    if args.acl_command == "template":
        sys.stdout.write(acl.template())
    elif args.acl_command == "write":
        for path in acl.write_templates():  # the single Redis's and the Sentinel option's
            print(f"wrote {path.relative_to(acl.ROOT)}")
    elif args.acl_command == "passwords":
        # every user's, the Sentinel option's included, and the Sentinels' own password
        variables = [r.password_variable for r in acl.SENTINEL_ROLES.values()]
        for variable, password in acl.generate_passwords(
                [*variables, "CRYPTO_ML_SENTINEL_PASSWORD"]).items():
            print(f"{variable}={password}")
    else:
        for role in acl.ROLES.values():
            print(f"{role.name}: {role.purpose}\n  rules: {' '.join(role.rules())}")
    return EXIT_OK
