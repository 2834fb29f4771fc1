"""Bindings to native libraries (ctypes), each optional: the registry works without them."""
