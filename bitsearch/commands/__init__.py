"""Subcommands of ``bitsearch`` beyond the core ones; each module has ``register(subparsers)``
and is listed in :data:`bitsearch.cli.COMMAND_MODULES`."""
