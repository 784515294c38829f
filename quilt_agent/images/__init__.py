"""Images: a content-addressed store of blobs and layers (each unpacked once, an overlayfs lowerdir), OCI and
Docker archive import, and registry pulls. service.Images is the API the manager and the bus layer call."""
