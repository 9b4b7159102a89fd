"""Places where task bodies run, behind one `Runner` protocol."""
