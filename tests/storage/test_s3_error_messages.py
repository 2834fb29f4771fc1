"""What an S3 error says: the listing a bucket-level request was for, no dangling space when
S3 gave no code, and where a bucket of another region is served."""

from __future__ import annotations

from twisted.internet import reactor

from registry.storage.s3._client import S3Client
from registry.storage.s3._settings import S3Settings


def client() -> S3Client:
    return S3Client(
        reactor,
        S3Settings(bucket="b", regionendpoint="http://127.0.0.1:9", accesskey="a", secretkey="s"),
    )


def test_a_listing_error_names_the_prefix_it_listed() -> None:
    body = b"<Error><Code>InternalError</Code><Message>oops</Message></Error>"
    error = client().error(500, body, "GET", "", query={"prefix": "docker/registry/v2/blobs/"})
    assert str(error) == (
        "S3 error on GET / (listing docker/registry/v2/blobs/) in bucket b:"
        " HTTP 500 InternalError (oops)"
    )


def test_an_answer_without_a_body_says_its_status_only() -> None:
    assert str(client().error(500, b"", "HEAD", "k")) == "S3 error on HEAD k in bucket b: HTTP 500"


def test_a_bucket_of_another_region_says_where_it_is_served() -> None:
    body = (
        b"<Error><Code>PermanentRedirect</Code><Message>Use the specified endpoint.</Message>"
        b"<Endpoint>b.s3.eu-west-1.amazonaws.com</Endpoint></Error>"
    )
    assert str(client().error(301, body, "HEAD", "k")) == (
        "S3 error on HEAD k in bucket b: HTTP 301 PermanentRedirect (Use the specified"
        " endpoint.); it is served at b.s3.eu-west-1.amazonaws.com ([storage] regionendpoint,"
        " region)"
    )
