"""One module per ``attnlab`` subcommand, each with ``register(subparsers)``.

Modules import their heavy dependencies inside ``run`` so that ``attnlab --help`` stays fast.
"""
