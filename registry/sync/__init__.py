"""
Replication (``[sync:NAME]``): images copied between this registry and a remote one on a
schedule, pulled into this registry or pushed from it, incrementally by digest.  See
docs/replication.md.

- `registry.sync.config`: the section's keys;
- `registry.sync.filters`: repository globs, tag filters, newest N by semantic version;
- `registry.sync.planner`: what a run copies (digests compared on both sides);
- `registry.sync.copier` and `registry.sync.transfer`: copying manifests and blobs;
- `registry.sync.throttle`: the bandwidth limit;
- `registry.sync.service`: the schedule, the runs, the log lines (import it from there: it
  needs the handlers' context, which itself holds the `SyncBoard`);
- `registry.sync.status` and `registry.sync.metrics`: what the status route and /metrics show.

Nothing is imported here: a registry without ``[sync:NAME]`` loads only the status board, not
the client library replication runs on.
"""
