"""Sub-commands of ``nbface``; one module per command, each with ``register(subparsers)``."""
