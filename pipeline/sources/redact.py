"""Credentials in URLs: found, masked for showing, refused as names (docs/design/sources.md, Remote).

A video's name is stored in the manifest and opened by it later, so a name cannot hold a
secret that is masked when stored. Remote names therefore never carry credentials: a URL
with a user:password part or a signed query string is refused at the door with one line
(credentials come from the environment, profiles or the cloud's default credentials), and
every message that shows such a URL shows it masked.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

MASK = "***"

# Query parameters that carry a secret or a signature: AWS (SigV2/SigV4 presigned URLs),
# GCS signed URLs, Azure SAS tokens, and the common token/key spellings.
SECRET_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "awsaccesskeyid",
    "x-goog-signature", "x-goog-credential", "sig", "token", "access_token", "key",
    "api_key", "apikey", "password", "secret", "auth",
})
# user:password@ after the scheme. A secret may hold a raw "/" (AWS's often do), so the user
# part is "anything before the first / or @, a colon, anything up to an @"; a bucket name has
# no colon, so a key such as "bucket/a:b@c.mp4" is no match, and on the web a colon followed
# by digits and a slash is a port ("host:8080/a@b.mp4").
_USERINFO = re.compile(
    r"((?:s3|s3a|gs|gcs|az|abfs|abfss|adl)://)[^/@\s]*:[^@\s]*@"
    r"|([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/@?#\s]*@|[^/@:\s]*:(?!\d*/)[^@\s]*@)",  # host:8080/a@b.mp4 is a port
    re.I,
)
_QUERY_SECRET = re.compile(r"([?&])([^=&#\s]+)=([^&#\s'\"]*)")


def secret_parts(url: str) -> list[str]:
    """What in `url` is a credential: 'user:password' and the names of secret query parameters."""
    found = []
    parts = urlsplit(url)
    if _USERINFO.match(url.strip()):
        found.append("user:password")
    found += [k for k, _v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_PARAMS]
    return found


def redact(text: str) -> str:
    """`text` with every URL's user:password part and secret query values replaced by ***."""
    def user(m: re.Match[str]) -> str:
        return f"{m.group(1) or m.group(2)}{MASK}@"  # the whole user part: its length would say something

    def query(m: re.Match[str]) -> str:
        key = m.group(2)
        return f"{m.group(1)}{key}={MASK}" if key.lower() in SECRET_PARAMS else m.group(0)

    out = []
    for word in re.split(r"(\s+)", text):
        if "://" in word:
            word = _QUERY_SECRET.sub(query, _USERINFO.sub(user, word))
        out.append(word)
    return "".join(out)
