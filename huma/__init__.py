"""huma: the command line that composes cardlib, terminal, server and firmware_config.

This is the composition root: it may import every package, none imports it.
"""
