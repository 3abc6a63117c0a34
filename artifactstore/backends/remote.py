"""Object storage through fsspec: the ``Backend`` interface for ``s3://`` and any fsspec URL.

S3 is configured like every AWS tool: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` (S3-compatible servers), ``AWS_DEFAULT_REGION`` or ``AWS_REGION``; or by
``storage_options`` (s3fs's ``key``, ``secret``, ``endpoint_url``, ``config_kwargs``, ...).

Every object is written with one PUT (s3fs uses a multipart upload above 100 MiB), which S3
makes atomic. Refs, the only mutable objects, are written with conditional PUTs
(``If-None-Match: *`` to create, ``If-Match: <etag>`` to update). When the outcome of such a PUT
is unknown (the response was lost, or a retry of a request that had already succeeded was
refused), the ref is read back: each swap tags its object with a write id, so reading back tells
this writer's success from another writer's, even when both wrote the same bytes.

fsspec, s3fs and botocore are imported only when a remote backend is opened: together they take
about half a second to import, which every command on a local store would otherwise pay.
"""

import os
import uuid
from collections.abc import Iterator
from typing import Any, overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ArtifactStoreError, Conflict, NotFound, StoreError
from ..ids import digest
from . import BufferedWriter, Capabilities

WRITE_ID = "artifactstore-write-id"  # object metadata of refs: which swap wrote this version

# Fail fast on an unreachable endpoint, and keep retries few: s3fs retries each call again on
# top of botocore's attempts.
S3_CLIENT_CONFIG = {"connect_timeout": 3, "read_timeout": 30,
                    "retries": {"total_max_attempts": 3, "mode": "standard"}}
S3FS_ATTEMPTS = 2

ACCESS_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                 "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "403"}
MISSING_KEY = {"NoSuchKey", "404"}
# What S3 answers a conditional PUT whose condition does not hold: 412, 409 when another
# conditional write to the key is in flight, NoSuchKey for If-Match on a deleted ref.
CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"}

SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "signature", "key")


def mask_secrets(config: dict) -> dict:
    """A copy of ``config`` safe to print: secrets become ``****``, access key ids their first 4 characters.

    Names are matched case-insensitively: ``AWS_SECRET_ACCESS_KEY``, ``secret``, ``token``,
    ``AWS_SESSION_TOKEN``, passwords and other keys are hidden; ``AWS_ACCESS_KEY_ID`` and s3fs's
    ``key`` (an access key id) are shortened; URLs lose their passwords. Paths to secrets
    (``AWS_SHARED_CREDENTIALS_FILE``) are shown. Nested dicts are masked too.
    """
    masked: dict[str, Any] = {}
    for name, value in config.items():
        lowered = str(name).lower()
        if isinstance(value, dict):
            masked[name] = mask_secrets(value)
        elif not isinstance(value, str) or not value:
            masked[name] = value
        elif lowered == "key" or "key_id" in lowered:
            masked[name] = value[:4] + "…"
        elif any(word in lowered for word in SECRET_WORDS) and not lowered.endswith(("_file", "_path")):
            masked[name] = "****"
        else:
            masked[name] = mask_url(value) if "://" in value else value
    return masked


@overload
def mask_url(url: str) -> str: ...
@overload
def mask_url(url: None) -> None: ...


def mask_url(url: str | None) -> str | None:
    """``url`` without its password and without the values of secret-looking query parameters."""
    if not url or "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:****@{host}"
    query = urlencode(mask_secrets(dict(parse_qsl(parts.query, keep_blank_values=True))), safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class FsspecBackend:
    """Objects under an fsspec URL; on S3 (and S3-compatible servers) refs too."""

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec

        self.url = url.rstrip("/")
        protocol = fsspec.utils.get_protocol(url)
        self._s3 = protocol in ("s3", "s3a")
        # On a filesystem with directories and rename (a local directory reached through fsspec),
        # a write is a temporary file renamed into place: one PUT is atomic, a file write is not.
        self._renames = protocol in ("file", "local")
        options = _s3_options(storage_options or {}) if self._s3 else dict(storage_options or {})
        if self._renames:
            options.setdefault("auto_mkdir", True)
        try:
            self._fs, root = fsspec.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:  # no such protocol, or its package is missing
            raise StoreError(f"{mask_url(self.url)}: {exc}") from None
        self._root = root.rstrip("/")
        self.capabilities = Capabilities(local_directory=None, conditional_writes=self._s3, concurrent_ranges=True)
        if self._s3:
            if not self._root:
                raise StoreError(f"{mask_url(self.url)}: the URL names no bucket (s3://bucket/prefix)")
            self._fs.retries = S3FS_ATTEMPTS
            self._bucket = self._root.partition("/")[0]

    def describe(self) -> str:
        """The URL, and the endpoint where it is not AWS's, for messages."""
        endpoint = self._endpoint()
        return f"{mask_url(self.url)} at {mask_url(endpoint)}" if endpoint else mask_url(self.url)

    def _endpoint(self) -> str | None:
        if not self._s3:
            return None
        return (self._fs.endpoint_url or self._fs.client_kwargs.get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"

    # -- objects ----------------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        return self._call(key, self._fs.cat_file, self._path(key))

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call(key, self._fs.cat_file, self._path(key), start=offset, end=offset + length)

    def read_ranges(self, requests: list[tuple[str, int, int]]) -> list[bytes]:
        """``(key, offset, length)`` ranges, read concurrently (on S3: one GET each, in parallel)."""
        results = self._call(None, self._fs.cat_ranges, [self._path(key) for key, _, _ in requests],
                             [offset for _, offset, _ in requests],
                             [offset + length for _, offset, length in requests])
        for (key, _, _), result in zip(requests, results):
            if isinstance(result, Exception):
                raise self._error(result, key) from None
        return results

    def write(self, key: str, data: bytes) -> None:
        if not self._renames:
            self._call(key, self._fs.pipe_file, self._path(key), data)
            return
        temporary = self._path(f"tmp/w-{uuid.uuid4().hex}")
        try:
            self._call(key, self._fs.pipe_file, temporary, data)
            self._call(key, self._fs.mv, temporary, self._path(key))
        finally:
            if self._fs.exists(temporary):
                self._fs.rm_file(temporary)

    def open_writer(self, *, cached: bool = True) -> BufferedWriter:
        # S3 has no rename to publish by: the object is built in memory and published with one PUT
        return BufferedWriter(self)

    def exists(self, key: str) -> bool:
        try:
            return self._call(key, self._fs.info, self._path(key))["type"] == "file"
        except NotFound:
            return False

    def size(self, key: str) -> int:
        return self._call(key, self._fs.info, self._path(key))["size"]

    def modified(self, key: str) -> float:
        """When the object was written, in seconds since the epoch."""
        info = self._call(key, self._fs.info, self._path(key))
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under a directory prefix, recursively, in sorted order."""
        try:
            paths = self._call(prefix, self._fs.find, self._path(prefix))
        except NotFound:
            return
        start, under = len(self._root) + 1, f"{prefix}/" if prefix else ""
        yield from sorted(key for key in (path[start:] for path in paths) if key.startswith(under))

    def delete(self, key: str) -> None:
        try:
            self._call(key, self._fs.rm_file, self._path(key))
        except NotFound:
            pass

    # -- refs -------------------------------------------------------------------------------

    def read_ref(self, key: str) -> tuple[bytes | None, str | None]:
        """The ref's bytes and token (its ETag on S3, from the same response as the bytes)."""
        if not self._s3:
            try:
                data = self.read(key)
            except NotFound:
                return None, None
            return data, digest(data).hex()
        found = self._fetch_ref(key)
        return (None, None) if found is None else found[:2]

    def swap_ref(self, key: str, data: bytes, expected: str | None) -> str:
        """Replace the ref only if its token is still ``expected`` (``None``: it must not exist).

        Returns the new token; raises ``Conflict`` when another writer changed the ref first.
        A swap whose response was lost may have been applied and then replaced by another
        writer's before it is read back: that, too, is reported as ``Conflict``.
        """
        if not self._s3:
            raise StoreError(f"{mask_url(self.url)}: refs need conditional writes, which only S3 "
                             "(or a local directory) provides here")
        write_id = uuid.uuid4().hex
        try:
            return self._run(key, self._put_ref, key, data, expected, write_id)
        except _OutcomeUnknown:
            pass
        found = self._fetch_ref(key)
        if found is not None and found[2] == write_id:
            return found[1]
        raise Conflict(f"{key} changed concurrently")

    async def _put_ref(self, key: str, data: bytes, expected: str | None, write_id: str) -> str:
        from botocore import exceptions as boto

        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        client = await self._fs.set_session()
        try:
            response = await client.put_object(Bucket=self._bucket, Key=self._object_key(key), Body=data,
                                               Metadata={WRITE_ID: write_id}, **condition)
        except boto.ClientError as exc:
            # A refusal may answer a retry whose first attempt succeeded (aiohttp resends a PUT
            # on a dropped connection, botocore on errors): the read-back decides.
            if _error_code(exc) in CONDITION_FAILED or _status(exc) >= 500:
                raise _OutcomeUnknown from exc
            raise
        except (boto.ConnectionError, boto.HTTPClientError) as exc:  # the request may have reached S3
            raise _OutcomeUnknown from exc
        return response["ETag"]

    def _fetch_ref(self, key: str) -> tuple[bytes, str, str | None] | None:
        """The ref's bytes, ETag and write id from one GET; ``None`` when it does not exist."""
        try:
            return self._run(key, self._get_ref, key)
        except NotFound:
            return None

    async def _get_ref(self, key: str) -> tuple[bytes, str, str | None]:
        client = await self._fs.set_session()
        response = await client.get_object(Bucket=self._bucket, Key=self._object_key(key))
        async with response["Body"] as body:
            data = await body.read()
        return data, response["ETag"], response.get("Metadata", {}).get(WRITE_ID)

    def _object_key(self, key: str) -> str:
        return self._fs.split_path(self._path(key))[1]

    # -- errors -----------------------------------------------------------------------------

    def _run(self, key: str, coroutine_function, *args):
        """Run one of this backend's coroutines on fsspec's event loop; errors become ours."""
        from fsspec.asyn import sync

        return self._call(key, sync, self._fs.loop, coroutine_function, *args)

    def _call(self, key: str | None, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ArtifactStoreError, _OutcomeUnknown):
            raise
        except Exception as exc:
            if not self._is_storage_error(exc):
                raise
            raise self._error(exc, key) from None

    def _is_storage_error(self, exc: Exception) -> bool:
        if isinstance(exc, OSError):
            return True
        if not self._s3:
            return False
        import aiohttp
        from botocore import exceptions as boto

        return isinstance(exc, (boto.BotoCoreError, boto.ClientError, aiohttp.ClientError))

    def _error(self, exc: Exception, key: str | None) -> ArtifactStoreError:
        """One line from our hierarchy for a storage failure; never a secret."""
        where = mask_url(self.url)
        what = f"{where}: {key}" if key else where
        if self._s3:
            translated = self._s3_error(exc, key, where, what)
            if translated is not None:
                return translated
        if isinstance(exc, FileNotFoundError):
            return NotFound(f"object {key} is missing from {where}")
        if isinstance(exc, PermissionError):
            return StoreError(f"{where}: access denied")
        return StoreError(f"{what}: {getattr(exc, 'strerror', None) or exc}")

    def _s3_error(self, exc: Exception, key: str | None, where: str, what: str) -> ArtifactStoreError | None:
        from botocore import exceptions as boto

        # s3fs turns botocore's errors into OSErrors and keeps the original as the cause.
        original = exc if isinstance(exc, (boto.BotoCoreError, boto.ClientError)) else exc.__cause__
        if isinstance(original, boto.ClientError):
            code = _error_code(original)
            if code == "NoSuchBucket":
                return StoreError(f"{where}: bucket {self._bucket} does not exist")
            if code in ACCESS_DENIED:
                return StoreError(f"{where}: access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
            if code == "404" and original.operation_name != "HeadObject":
                # S3 answers every request but HEAD with an error code; a bare 404 is some other server
                return StoreError(f"{where}: {mask_url(self._endpoint()) or 'the endpoint'} does not answer "
                                  "like S3 (HTTP 404 without an S3 error; check AWS_ENDPOINT_URL)")
            if code in MISSING_KEY:
                return NotFound(f"object {key} is missing from {where}")
            message = original.response.get("Error", {}).get("Message") or "request failed"
            return StoreError(f"{what}: {message} ({code})")
        if isinstance(original, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return StoreError(f"{where}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        if isinstance(original, boto.ConnectionError):
            endpoint = _origin(original.kwargs.get("endpoint_url")) or mask_url(self._endpoint()) or "S3"
            reason = "timed out" if isinstance(original, boto.ConnectTimeoutError) else \
                _connection_failure(original.kwargs.get("error"))
            return StoreError(f"cannot reach {endpoint}: {reason}")
        if isinstance(original, boto.BotoCoreError):
            return StoreError(f"{what}: {original}")
        return None


class _OutcomeUnknown(Exception):
    """A conditional PUT that may or may not have been applied: read the ref back to know."""


def fsspec_options(url: str) -> dict:
    """The options artifactstore opens ``url`` with through fsspec, for other libraries (Zarr) that
    reach the same place: on S3 its timeouts and retries, and no instance or listing cache (an
    s3fs instance cached by another library's event loop fails on this one)."""
    import fsspec

    return _s3_options({}) if fsspec.utils.get_protocol(url) in ("s3", "s3a") else {}


def _s3_options(storage_options: dict) -> dict:
    """s3fs options: ours for timeouts and retries unless given, and no caches that could go stale."""
    options = {"skip_instance_cache": True, "use_listings_cache": False, **storage_options}
    options["config_kwargs"] = {**S3_CLIENT_CONFIG, **storage_options.get("config_kwargs", {})}
    region = os.environ.get("AWS_REGION")
    if region and not os.environ.get("AWS_DEFAULT_REGION"):  # botocore reads only AWS_DEFAULT_REGION
        options["client_kwargs"] = {"region_name": region, **storage_options.get("client_kwargs", {})}
    return options


def _error_code(error) -> str:
    return str(error.response.get("Error", {}).get("Code") or _status(error))


def _status(error) -> int:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def _origin(url: str | None) -> str | None:
    """``scheme://host:port`` of a request URL, without credentials or path."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _connection_failure(error: BaseException | None) -> str:
    cause = getattr(error, "os_error", None) or error  # aiohttp wraps the socket error
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(cause or "connection failed")
