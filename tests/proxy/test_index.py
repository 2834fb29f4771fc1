"""The cache index: least-recently-used eviction plan, TTL, use counts, persistence."""

from __future__ import annotations

from registry.proxy.index import CacheIndex


def _index() -> CacheIndex:
    index = CacheIndex()
    index.add_manifest("r", "m1", 10, ["c1", "shared", "l1"], now=1)
    index.add_blob("r", "c1", 10, now=2)
    index.add_blob("r", "shared", 100, now=3)
    index.add_blob("r", "l1", 100, now=4)
    index.add_manifest("r", "m2", 10, ["c2", "shared", "l2"], now=5)
    index.add_blob("r", "c2", 10, now=6)
    index.add_blob("r", "l2", 100, now=7)
    return index


def test_plan_evicts_least_recently_used_image_but_keeps_shared_layer() -> None:
    index = _index()
    assert index.size == 340
    victims = index.plan(now=10, max_size=250, ttl=None)
    assert [(v.kind, v.digest) for v in victims] == [
        ("manifest", "m1"),
        ("blob", "c1"),
        ("blob", "l1"),
    ]


def test_plan_skips_what_is_in_use_and_ttl_spares_referenced_blobs() -> None:
    index = _index()
    index.use("m1")  # being served: the next least recently used image goes instead
    victims = index.plan(now=10, max_size=250, ttl=None)
    assert [v.digest for v in victims] == ["m2", "c2", "l2"]
    index.release("m1")
    index.touch_manifest("r", "m2", now=100)
    # Everything but m2 is older than the TTL; m2 keeps c2, shared and l2.
    victims = index.plan(now=101, max_size=None, ttl=50)
    assert {v.digest for v in victims} == {"m1", "c1", "l1"}


def test_index_round_trips_and_tolerates_garbage() -> None:
    index = _index()
    index.use("l2")
    again = CacheIndex.loads(index.dumps())
    assert again.size == index.size
    assert again.refcount["shared"] == 2
    assert [v.digest for v in again.plan(10, 250, None)] == ["m1", "c1", "l1"]
    assert CacheIndex.loads(b"not json").size == 0


def test_many_names_share_one_copy_of_each_digest() -> None:
    # A pull-through cache adds one manifest per repository name pulled, and images pulled
    # under many names share their digests: the index keeps one string per digest, not one
    # per name (built at run time, as digests parsed from requests and bodies are).
    index = CacheIndex()
    config = "sha256:" + "c" * 64
    manifest = "sha256:" + "m" * 64
    for n in range(3):
        index.add_manifest(f"team/app{n}", "".join(manifest), 10, ["".join(config)], now=n)
        index.add_blob(f"team/app{n}", "".join(config), 10, now=n)
    digests = {id(d) for _, d in index.manifests}
    refs = {id(r) for m in index.manifests.values() for r in m.refs}
    assert len(digests) == 1
    assert len(refs) == 1
    assert next(iter(refs)) == id(next(iter(index.blobs)))
    reloaded = CacheIndex.loads(index.dumps())
    assert len({id(d) for _, d in reloaded.manifests}) == 1
    assert len({id(r) for m in reloaded.manifests.values() for r in m.refs}) == 1
