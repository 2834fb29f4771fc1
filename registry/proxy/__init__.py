"""
Pull-through caching: the upstream client (`registry.proxy.upstream`) and, on top of it, the
stores that wrap the local ones.
"""
