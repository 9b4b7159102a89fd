"""BLAKE2b, the one hash behind every digest asyncflow makes, imported without hashlib.

Fingerprints, signatures, versions' inputs, stored results, input files and file names
all use `blake2b`. hashlib's own is CPython's ``_blake2`` module (hashlib never takes
BLAKE2 from OpenSSL), but importing hashlib loads OpenSSL's bindings (``_hashlib``) too:
over a millisecond of every first run, for nothing used. The standard library's `random`
takes its sha512 the same way.
"""

from __future__ import annotations

try:
    from _blake2 import blake2b as blake2b
except ImportError:  # a Python without CPython's module: the same hash, through hashlib
    from hashlib import blake2b as blake2b
