"""The commands of ``bitsearch``: one module per command, each with ``register(subparsers)``
(adds its parser, with ``set_defaults(func=...)``), listed in order in
:data:`bitsearch.cli.COMMANDS`.  :mod:`.common` holds what several commands share."""
