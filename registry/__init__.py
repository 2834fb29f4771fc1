"""txregistry: an OCI Distribution registry on Twisted."""

__version__ = "0.1.0"
