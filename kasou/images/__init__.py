"""Guest images built from Debian packages, cached under the image dir."""
