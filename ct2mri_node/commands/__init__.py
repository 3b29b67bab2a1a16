"""One module per ``ct2mri-node`` sub-command; each exposes ``register(subparsers)``."""
