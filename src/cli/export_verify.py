#!/usr/bin/env python3
"""Verifies a tollgate audit export without tollgate.

    python3 verify.py [EXPORT_DIR]        (needs: pip install cryptography)

Checks, and names the first failure of:
  - every file against MANIFEST.json (sha256);
  - every event's hash (sha256 of the canonical JSON of its other fields);
  - each chain's events follow one another (seq + 1, prev_hash = the
    previous event's hash) from the first exported one, whose prev_hash
    anchors the chain to what came before the export;
  - every checkpoint's Ed25519 signature, by its kid in audit-keys.json,
    over the canonical JSON of its other fields;
  - every checkpointed position in the export holds the certified event,
    and the chain reaches the last checkpoint within the export.
Exit status 0 when all hold.
"""
import base64
import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(root):
    with open(os.path.join(root, "MANIFEST.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    for name, digest in manifest["files"].items():
        with open(os.path.join(root, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digest:
                fail(f"{name} differs from MANIFEST.json")
    heads, seen = {}, {}
    for e in lines(os.path.join(root, "events.jsonl")):
        body = {k: v for k, v in e.items() if k != "hash"}
        if hashlib.sha256(canonical(body)).hexdigest() != e["hash"]:
            fail(f"changed event: {e['chain']} #{e['seq']}")
        if e["chain"] in heads:
            seq, prev = heads[e["chain"]]
            if e["seq"] != seq + 1 or e["prev_hash"] != prev:
                fail(f"dropped, inserted or reordered event: {e['chain']} #{e['seq']}")
        else:
            expected = manifest["chains"].get(e["chain"], {})
            if e["seq"] != expected.get("first_seq") or e["prev_hash"] != expected.get("first_prev_hash"):
                fail(f"the export of {e['chain']} does not start where MANIFEST.json says")
        heads[e["chain"]] = (e["seq"], e["hash"])
        seen[(e["chain"], e["seq"])] = e["hash"]
    for chain, expected in manifest["chains"].items():
        if heads.get(chain, (None, None))[0] != expected["last_seq"]:
            fail(f"cut or removed chain: {chain} ends at {heads.get(chain, (0,))[0]}, MANIFEST.json says {expected['last_seq']}")
    with open(os.path.join(root, "audit-keys.json"), encoding="utf-8") as f:
        keys = {k["kid"]: Ed25519PublicKey.from_public_bytes(b64url(k["x"])) for k in json.load(f)["keys"]}
    checked = 0
    for c in lines(os.path.join(root, "checkpoints.jsonl")):
        body = {k: v for k, v in c.items() if k != "signature"}
        if c["kid"] not in keys:
            fail(f"checkpoint {c['chain']} #{c['seq']}: unknown audit key {c['kid']}")
        try:
            keys[c["kid"]].verify(b64url(c["signature"]), canonical(body))
        except Exception:
            fail(f"forged or altered checkpoint: {c['chain']} #{c['seq']}")
        if seen.get((c["chain"], c["seq"])) != c["hash"]:
            fail(f"the event at {c['chain']} #{c['seq']} is not the one its checkpoint certified")
        checked += 1
    events = sum(1 for _ in seen)
    print(f"ok: {events} events on {len(heads)} chain(s), {checked} signed checkpoint(s), "
          f"{manifest['from']} to {manifest['to']}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
