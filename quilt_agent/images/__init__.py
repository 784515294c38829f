"""Images: rootfs tarballs unpacked once into content-addressed layers (overlayfs lowerdirs)."""

from quilt_agent.images.store import Image, ImageStore

__all__ = ["Image", "ImageStore"]
