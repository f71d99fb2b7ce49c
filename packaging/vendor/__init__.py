"""Libraries Debian 12 does not package, carried by the Debian package."""
