"""The registry API's vocabulary: names, references, digests, media types and error codes."""
