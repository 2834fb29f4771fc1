"""The S3 settings' own rules: where credentials come from, and which endpoints are refused."""

from __future__ import annotations

import pytest

from registry.storage.s3._settings import S3Settings


def test_each_empty_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret kept out of the file (``accesskey`` there, ``AWS_SECRET_ACCESS_KEY`` in the
    environment) signed with an empty secret: S3 answered SignatureDoesNotMatch."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    assert S3Settings("b", accesskey="file-access").credentials() == (
        "file-access",
        "env-secret",
        None,  # the session token belongs to the environment's own key
    )
    assert S3Settings("b", secretkey="file-secret").credentials() == (
        "env-access",
        "file-secret",
        "env-token",
    )
    assert S3Settings("b").credentials() == ("env-access", "env-secret", "env-token")
    both = S3Settings("b", accesskey="a", secretkey="s")
    assert both.credentials() == ("a", "s", None)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match="needs accesskey and secretkey"):
        S3Settings("b", accesskey="file-access").credentials()


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000/some/path", "https://s3.example.com/bucket/"]
)
def test_an_endpoint_with_a_path_is_refused(endpoint: str) -> None:
    """The path was taken for the bucket and keys: requests went to another bucket."""
    with pytest.raises(ValueError, match="without a path"):
        S3Settings("b", regionendpoint=endpoint)


@pytest.mark.parametrize(
    "endpoint", ["", "http://127.0.0.1:9000", "http://127.0.0.1:9000/", "s3.example.com"]
)
def test_endpoints_without_a_path_are_taken(endpoint: str) -> None:
    S3Settings("b", regionendpoint=endpoint)
