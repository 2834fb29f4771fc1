"""Storage: the driver interface, its backends, and the registry's logic over any driver."""
