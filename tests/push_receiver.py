#!/usr/bin/env python3
"""A local Web Push receiver that checks assistantd's pushes with code we did not write.

It plays both sides a browser and a push service would: it makes a device's key pair and auth
secret (as PushManager.subscribe() does), and it accepts pushes for that device (as a push
service does), answering with a scripted status. Every push is decrypted with PyPI `http_ece`
(RFC 8188/8291, on `cryptography`) and its VAPID header checked with `cryptography` alone
(ES256 signature against `k`, `aud` = this receiver's origin, `exp` in (now, now + 24 h],
`sub` a mailto: or https: contact).

    python3 tests/push_receiver.py [--port 0] [--lifetime 600] [--exit-on-stdin-eof]

Prints the port it listens on (127.0.0.1 only) as the first stdout line. Routes:

    GET  /keys/<device>[?status=201&delay_ms=0&retry_after=30&hang_secs=0]
         (re)creates the device with fresh keys and a scripted answer; returns
         {"endpoint", "p256dh", "auth"}, exactly a browser's PushSubscription JSON fields.
    POST /push/<device>        the push endpoint: records the message, then answers.
    GET  /received/<device>    {"messages": [...]}: headers, size, record count, the
                               decrypted plaintext (or the decryption error) and JWT checks.

Needs: pip install http-ece cryptography
"""

import argparse
import base64
import json
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:
    import http_ece
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError as e:  # pragma: no cover - the Rust test reports this line
    print(f"missing Python module: {e.name} (pip install http-ece cryptography)", file=sys.stderr)
    sys.exit(3)

MAX_BODY = 64 * 1024  # we never read more than this from a push request
MAX_JWT_LIFETIME = 24 * 3600  # RFC 8292 section 2
REASONS = {
    400: b'{"code":400,"errno":110,"error":"Bad Request","message":"Invalid payload"}',
    403: b"Forbidden: VAPID credentials rejected",
    413: b"Payload Too Large",
    429: b"Too many messages, slow down",
    500: b"Internal push service error",
    404: b"Subscription not found",
    410: b"Subscription expired",
}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Device:
    def __init__(self, status=201, delay_ms=0, retry_after=None, hang_secs=0):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public = self.key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        self.auth = os.urandom(16)
        self.status = status
        self.delay_ms = delay_ms
        self.retry_after = retry_after
        self.hang_secs = hang_secs
        self.messages = []


def check_vapid(authorization, audience):
    """Checks `vapid t=<jwt>, k=<key>`; returns a dict with `ok`, `errors` and what it saw."""
    out = {"ok": False, "errors": [], "claims": None, "header": None, "k": None}
    errors = out["errors"]
    if not authorization or not authorization.startswith("vapid "):
        errors.append(f"Authorization is not a vapid scheme: {authorization!r}")
        return out
    params = {}
    for part in authorization[len("vapid "):].split(","):
        name, _, value = part.strip().partition("=")
        params[name] = value
    token, k = params.get("t", ""), params.get("k", "")
    out["k"] = k
    if len(k) != 87 or "=" in k:
        errors.append(f"k is not 87 unpadded base64url chars: {len(k)}")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64u_decode(k))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        errors.append(f"k is not a P-256 point: {e}")
        return out
    pieces = token.split(".")
    if len(pieces) != 3:
        errors.append("JWT does not have three parts")
        return out
    try:
        header = json.loads(b64u_decode(pieces[0]))
        claims = json.loads(b64u_decode(pieces[1]))
        signature = b64u_decode(pieces[2])
    except Exception as e:  # noqa: BLE001
        errors.append(f"JWT does not decode: {e}")
        return out
    out["header"], out["claims"] = header, claims
    if header.get("alg") != "ES256" or header.get("typ") != "JWT":
        errors.append(f"JWT header is {header}")
    if len(signature) != 64:
        errors.append(f"signature is {len(signature)} bytes, not raw 64-byte r||s")
    else:
        der = utils.encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public.verify(
                der, f"{pieces[0]}.{pieces[1]}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            errors.append("ES256 signature does not verify against k")
    if claims.get("aud") != audience:
        errors.append(f"aud {claims.get('aud')!r} is not the origin {audience!r}")
    exp, now = claims.get("exp"), time.time()
    if not isinstance(exp, int) or isinstance(exp, bool):
        errors.append(f"exp is not an integer: {exp!r}")
    elif not now < exp <= now + MAX_JWT_LIFETIME:
        errors.append(f"exp {exp} is not within (now, now + 24 h]")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not (sub.startswith("mailto:") or sub.startswith("https:")):
        errors.append(f"sub is not a mailto: or https: contact: {sub!r}")
    out["ok"] = not errors
    return out


def inspect_body(device, body):
    """Record layout and decryption with http_ece."""
    info = {"length": len(body), "rs": None, "records": None}
    if len(body) >= 21:
        rs = struct.unpack("!I", body[16:20])[0]
        idlen = body[20]
        content = len(body) - 21 - idlen
        info["rs"] = rs
        info["records"] = -(-content // rs) if rs else None
    try:
        plaintext = http_ece.decrypt(
            body, private_key=device.key, auth_secret=device.auth, version="aes128gcm"
        )
        info["plaintext_b64"] = base64.b64encode(plaintext).decode()
        info["decrypt_error"] = None
    except Exception as e:  # noqa: BLE001
        info["plaintext_b64"] = None
        info["decrypt_error"] = f"{type(e).__name__}: {getattr(e, 'message', e)}"
    return info


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "push-receiver/1"

    def log_message(self, fmt, *args):  # quiet: the test prints what matters
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status, value):
        self.reply(status, json.dumps(value).encode(), [("Content-Type", "application/json")])

    def device_name(self, prefix):
        return urlsplit(self.path).path[len(prefix):]

    def do_GET(self):
        state = self.server.state
        url = urlsplit(self.path)
        if url.path.startswith("/keys/"):
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            name = self.device_name("/keys/")
            device = Device(
                status=int(q.get("status", 201)),
                delay_ms=int(q.get("delay_ms", 0)),
                retry_after=q.get("retry_after"),
                hang_secs=min(float(q.get("hang_secs", 0)), state["lifetime"]),
            )
            with state["lock"]:
                state["devices"][name] = device
            self.reply_json(200, {
                # A query with escapes in both cases: the sender must use the URL byte for byte.
                "endpoint": f"{state['origin']}/push/{name}?k=%2Fx%3d&y=%7E1",
                "p256dh": b64u(device.public),
                "auth": b64u(device.auth),
            })
        elif url.path.startswith("/received/"):
            with state["lock"]:
                device = state["devices"].get(self.device_name("/received/"))
                messages = list(device.messages) if device else None
            if messages is None:
                self.reply_json(404, {"error": "unknown device"})
            else:
                self.reply_json(200, {"messages": messages})
        else:
            self.reply_json(404, {"error": "not found"})

    def do_POST(self):
        state = self.server.state
        if not urlsplit(self.path).path.startswith("/push/"):
            self.reply_json(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY))
        with state["lock"]:
            device = state["devices"].get(self.device_name("/push/"))
        if device is None:
            self.reply(404, b"no such device")
            return
        message = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "vapid": check_vapid(self.headers.get("Authorization"), state["origin"]),
        }
        message.update(inspect_body(device, body))
        with state["lock"]:
            device.messages.append(message)
        if device.hang_secs:
            time.sleep(device.hang_secs)  # a stuck push service; bounded by --lifetime
        if device.delay_ms:
            time.sleep(device.delay_ms / 1000)
        headers = []
        if 200 <= device.status < 300:
            headers.append(("Location", f"{state['origin']}/m/{len(device.messages)}"))
        if device.retry_after is not None:
            headers.append(("Retry-After", device.retry_after))
        if device.status == 403:
            # Microsoft's push service explains itself in headers.
            headers.append(("X-WNS-Status", "dropped"))
            headers.append(("X-WNS-Error-Description", "Invalid VAPID token"))
        try:
            self.reply(device.status, REASONS.get(device.status, b""), headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up (its deadline passed): that is the point of a hang


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=600,
                        help="exit after this many seconds, whatever happens")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when standard input closes (the parent test died)")
    args = parser.parse_args()

    # socketserver's default listen backlog is 5: too small for 16 parallel connects.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    server.state = {
        "lock": threading.Lock(),
        "devices": {},
        "origin": f"http://127.0.0.1:{port}",
        "lifetime": args.lifetime,
    }
    threading.Timer(args.lifetime, lambda: os._exit(0)).start()
    if args.exit_on_stdin_eof:
        def watch_stdin():
            sys.stdin.read()
            os._exit(0)
        threading.Thread(target=watch_stdin, daemon=True).start()
    print(port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
