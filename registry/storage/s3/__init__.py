"""
The S3 storage driver (``storage: s3``), asynchronous over treq, signed with SigV4 (stdlib).

See `registry.storage.s3._writer` for how unfinished uploads are kept across processes and
``docs/storage-s3.md`` for the settings.
"""

from registry.storage.s3._client import S3CredentialsError, S3Error
from registry.storage.s3._driver import S3Driver
from registry.storage.s3._settings import S3Settings

__all__ = ["S3CredentialsError", "S3Driver", "S3Error", "S3Settings"]
