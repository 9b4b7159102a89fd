"""Example workflows that ship with asyncflow; run one with ``python -m asyncflow.examples.NAME``."""
