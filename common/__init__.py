"""Shared pieces of the bundles: metric handlers that follow official scoring rules, mixed-precision
settings per device, and safe checkpoint I/O. Nothing bundle-specific lives here."""

__version__ = "0.1.0"
