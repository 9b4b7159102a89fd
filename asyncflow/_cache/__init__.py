"""The on-disk cache: an SQLite index (WAL), result blobs, task directories, leases."""
