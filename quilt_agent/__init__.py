"""Quilt: Linux containers for systemd hosts, driven over D-Bus."""

__version__ = "0.1.0"
