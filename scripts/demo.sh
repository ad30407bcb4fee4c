#!/usr/bin/env bash
# `make demo`: see a notification arrive without a browser. Starts assistantd on a temp state
# dir and a local push receiver (tests/push_receiver.py, which plays the browser and the push
# service and decrypts with PyPI http_ece), registers a device, sends a notification and prints
# what the device decrypted. Everything runs on 127.0.0.1 and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/assistantd}
if ! python3 -c 'import http_ece, cryptography' 2>/dev/null; then
  echo "the demo's receiver needs: python3 -m pip install -r tests/requirements.txt" >&2
  exit 1
fi
T=$(mktemp -d)
cleanup() { kill "${SRV:-}" "${RX:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

"$BIN" init --state "$T/state" >/dev/null
"$BIN" serve --state "$T/state" --listen 127.0.0.1:0 --allow-private-push-endpoints \
  >"$T/serve.out" 2>"$T/serve.log" & SRV=$!
python3 tests/push_receiver.py --port 0 --lifetime 120 >"$T/rx.out" 2>"$T/rx.log" & RX=$!
for _ in $(seq 100); do
  grep -q 'listening on' "$T/serve.out" 2>/dev/null && [ -s "$T/rx.out" ] && break
  sleep 0.1
done
BASE=$(sed -n 's/^listening on //p' "$T/serve.out")
RXPORT=$(head -n1 "$T/rx.out")
TOKEN=$(cat "$T/state/repos/assistant/.opencode/internal-token")
echo "assistantd:  $BASE"
echo "receiver:    http://127.0.0.1:$RXPORT (plays the browser and the push service)"

echo
echo "1. the device subscribes (what PushManager.subscribe() hands the page):"
SUB=$(curl -sS "http://127.0.0.1:$RXPORT/keys/phone?status=201")
BODY=$(python3 -c 'import json,sys; k=json.load(sys.stdin); print(json.dumps({"endpoint":k["endpoint"],"keys":{"p256dh":k["p256dh"],"auth":k["auth"]},"deviceName":"demo phone"}))' <<<"$SUB")
curl -sS -X POST "$BASE/api/notifications/subscribe" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d "$BODY" | python3 -m json.tool

echo
echo "2. an agent sends a notification:"
curl -sS -X POST "$BASE/api/internal/notifications/send" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{"title":"Build finished ✅","body":"All 212 tests pass on main.","url":"/sessions/42","priority":"high","tag":"build"}' \
  | python3 -m json.tool

echo
echo "3. what the device received and decrypted (independently, with http_ece):"
curl -sS "http://127.0.0.1:$RXPORT/received/phone" | python3 -c '
import base64, json, sys
for m in json.load(sys.stdin)["messages"]:
    print("  headers:   ", {k: m["headers"][k] for k in ("ttl", "urgency", "topic", "content-encoding") if k in m["headers"]})
    print("  body bytes:", m["length"], "in", m["records"], "aes128gcm record(s)")
    print("  VAPID JWT: ", "valid" if m["vapid"]["ok"] else "INVALID", m["vapid"].get("claims"))
    print("  plaintext: ", base64.b64decode(m["plaintext_b64"]).decode())
'
