#!/usr/bin/env python3
"""The reliability promise checked as a user would, with clients that are not
tollgate's: confluent-kafka produces and consumes, PyJWT signs the requesters'
tokens and verifies the grants.

On one partition: 20 valid requests, an 800 000-byte message, a request whose
token alone is 600 KB, 20 more valid requests. tollgate must decide all 40,
dead-letter the two oversized inputs with letters that fit (cut, their length
and sha256 stated), keep running, commit offsets past everything, and stop
cleanly on SIGTERM. Then `tollgate audit verify --kafka` must pass.

Grants are checked as a data host would: PyJWT verifies each one with the
JWKS fetched from /.well-known/jwks.json (key chosen by kid, audience = the
holder department's code); a tampered or expired grant must fail, and
`tollgate grant verify --jwks URL` must agree with PyJWT on all three.
Then an operator revokes one grant with a command produced by
confluent-kafka: the reply, the grant event and /revocations must say so,
and `grant verify --revocations URL` must refuse it as grant.revoked.
The data host then reports what it served under another grant with a
confluent-kafka producer and a PyJWT-signed `data_host` token: accepted,
and a second report beyond the grant accepted and flagged usage.exceeds_grant.

    python3 tests/external/nothing_lost.py TOLLGATE_BINARY BOOTSTRAP [DATABASE_URL]

Needs `pip install confluent-kafka pyjwt cryptography`. Exits 1 on failure.
"""
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import urllib.request
import sys
import tempfile
import time
import uuid

import jwt
from confluent_kafka import Consumer, Producer, TopicPartition
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SUBJECT = "91610131MA6TG1L5X1"
# The holder of GX-610100-TOUR-0001 (catalogue.toml), the grants' audience.
HOLDER = "11610100MB00014076"
ISSUER = "https://idp.external.test"


def main(binary, bootstrap, database_url=None):
    run = uuid.uuid4().hex[:10]
    work = tempfile.mkdtemp()
    topics = {name: f"tollgate.{name}.ext{run}"
              for name in ("requests", "decisions", "audit", "usage", "dlq", "revocations", "grants", "replies",
                           "checkpoints", "usage_reports")}
    idp = Ed25519PrivateKey.generate()
    idp_pub = os.path.join(work, "ext-idp.pub.pem")
    with open(idp_pub, "wb") as f:
        f.write(idp.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update({
        "TOLLGATE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "TOLLGATE_KAFKA__GROUP_ID": f"tollgate-ext{run}",
        "TOLLGATE_DATABASE__URL": database_url or f"sqlite://{work}/tollgate.db",
        "TOLLGATE_AUTH__PUBLIC_KEYS": json.dumps([idp_pub]),
        "TOLLGATE_AUTH__ISSUERS": json.dumps([ISSUER]),
        "TOLLGATE_SERVICE__HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "TOLLGATE_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS": "100",
        "RUST_LOG": "info,librdkafka=warn",
    })
    env.update({f"TOLLGATE_TOPICS__{k.upper()}": v for k, v in topics.items()})
    log = open(os.path.join(work, "serve.log"), "w+")
    serve = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        jwk = wait_for_jwk(serve)
        partition, last, grants = check(serve, bootstrap, topics, idp, jwk, run)
        base = f"http://127.0.0.1:{http_port}"
        check_grants(binary, env, f"{base}/.well-known/jwks.json", grants)
        check_revocation(binary, env, bootstrap, topics, idp, base, grants[1], run)
        check_usage_report(bootstrap, topics, idp, grants[0], run)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, f"exit status {serve.returncode} after SIGTERM"
        assert_committed(bootstrap, topics, run, partition, last + 1)
        verify = subprocess.run([binary, "audit", "verify", "--kafka"], env=env, capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        print(verify.stdout.strip().splitlines()[-1])
    except BaseException:
        log.seek(0)
        sys.stderr.write("--- tollgate serve log (tail) ---\n" + "".join(log.readlines()[-40:]))
        raise
    finally:
        if serve.poll() is None:
            serve.kill()
    print("external check passed: 40 decisions, 2 dead letters that fit, offsets past every input")


def wait_for_jwk(serve):
    for line in serve.stdout:
        if line.startswith("grant verification key (JWK): "):
            return json.loads(line.split(": ", 1)[1])
    raise AssertionError(f"tollgate serve exited ({serve.wait()}) before printing its grant key")


def token(idp, extra=None):
    now = int(time.time())
    claims = {"sub": SUBJECT, "iss": ISSUER, "aud": "tollgate", "iat": now, "exp": now + 600,
              "jti": str(uuid.uuid4()), "roles": ["data_user"]}
    claims.update(extra or {})
    return jwt.encode(claims, idp, algorithm="EdDSA", headers={"kid": "ext-idp"})


def request(request_id, tok):
    return json.dumps({
        "schema": "tollgate.access_request/v1", "request_id": request_id, "token": tok,
        "dataset": "GX-610100-TOUR-0001", "operation": "query", "scenario": "smart-tourism",
        "purpose": {"class": "industry", "statement": "visitor-flow forecasts"},
    }).encode()


def check(serve, bootstrap, topics, idp, jwk, run):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    big = b"x" * 800_000
    huge_token = request(f"ext-{run}-huge-token", token(idp, {"pad": "p" * 600_000}))
    inputs = [request(f"ext-{run}-before-{i}", token(idp)) for i in range(20)]
    inputs += [big, huge_token]
    inputs += [request(f"ext-{run}-after-{i}", token(idp)) for i in range(20)]
    delivered = []
    for value in inputs:
        producer.produce(topics["requests"], key=b"one-partition", value=value,
                         on_delivery=lambda err, m: delivered.append((err, m.partition(), m.offset())))
    assert producer.flush(30) == 0, "requests not acknowledged"
    assert len(delivered) == len(inputs) and all(err is None for err, _, _ in delivered), delivered[:3]

    decisions = consume(bootstrap, topics["decisions"], 40)
    grant_key = jwt.PyJWK(jwk)
    for d in decisions:
        assert d["outcome"] == "approved", d
        claims = jwt.decode(d["grant"]["token"], grant_key.key, algorithms=["EdDSA"], options={"verify_aud": False})
        assert (claims["sub"], claims["request_id"], claims["jti"]) == (SUBJECT, d["request_id"], d["decision_id"])
    assert len({d["request_id"] for d in decisions}) == 40

    letters = {l["payload_sha256"]: l for l in consume(bootstrap, topics["dlq"], 2)}
    for original in (big, huge_token):
        letter = letters[hashlib.sha256(original).hexdigest()]
        assert letter["error"]["code"] == "input.too_large", letter["error"]
        carried = base64.b64decode(letter["payload_base64"])
        assert letter["truncated"] and letter["payload_bytes"] == len(original) and original.startswith(carried)
        assert len(json.dumps(letter)) < 1_000_000
    assert serve.poll() is None, "tollgate exited"
    _, partition, last = max(delivered, key=lambda d: d[2])
    return partition, last, [d["grant"]["token"] for d in decisions]


def check_grants(binary, env, jwks_url, grants):
    with urllib.request.urlopen(jwks_url, timeout=10) as r:
        jwks = jwt.PyJWKSet.from_dict(json.load(r))
    for g in grants:
        key = jwks[jwt.get_unverified_header(g)["kid"]]
        claims = jwt.decode(g, key.key, algorithms=["EdDSA"], audience=HOLDER, issuer="tollgate")
        assert claims["aud"] == HOLDER and claims["dataset"] == "GX-610100-TOUR-0001", claims
    good = grants[0]
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["operation"] = "download"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = ".".join((head, forged_body, sig))
    key = jwks[jwt.get_unverified_header(good)["kid"]].key
    try:
        jwt.decode(tampered, key, algorithms=["EdDSA"], audience=HOLDER)
        raise AssertionError("PyJWT accepted a tampered grant")
    except jwt.InvalidSignatureError:
        pass
    # Expired: as seen from a clock past `exp` (a negative leeway moves PyJWT's clock forward).
    past_exp = claims["exp"] - int(time.time()) + 1
    try:
        jwt.decode(good, key, algorithms=["EdDSA"], audience=HOLDER, leeway=-past_exp,
                   options={"verify_iat": False, "verify_nbf": False})
        raise AssertionError("PyJWT accepted an expired grant")
    except jwt.ExpiredSignatureError:
        pass

    def verify(token):
        out = subprocess.run([binary, "grant", "verify", token, "--jwks", jwks_url, "--audience", HOLDER, "--json"],
                             env=env, capture_output=True, text=True)
        return out.returncode, json.loads(out.stdout)
    code, report = verify(good)
    assert code == 0 and report["valid"] and report["claims"]["jti"] == claims["jti"], report
    code, report = verify(tampered)
    assert code == 1 and report["code"] == "grant.bad_signature", report
    print(f"grants: {len(grants)} verified by PyJWT with the published JWKS; tampered and expired refused")


def check_revocation(binary, env, bootstrap, topics, idp, base, grant, run):
    decision_id = jwt.decode(grant, options={"verify_signature": False})["jti"]
    operator = token(idp, {"sub": "11610000MB0001111E", "roles": ["operator"]})
    command = {"schema": "tollgate.revoke/v1", "command_id": f"ext-{run}-revoke", "token": operator,
               "target": {"grant": decision_id}, "reason": "external check"}
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topics["revocations"], key=b"ops", value=json.dumps(command).encode())
    assert producer.flush(30) == 0, "command not acknowledged"
    [reply] = consume(bootstrap, topics["replies"], 1)
    assert reply["outcome"] == "accepted" and reply["revoked"] == [decision_id], reply
    [event] = consume(bootstrap, topics["grants"], 1)
    assert (event["event"], event["decision_id"], event["reason"]["code"]) == ("revoked", decision_id, "revoke.command")
    with urllib.request.urlopen(f"{base}/revocations", timeout=10) as r:
        listed = [g["decision_id"] for g in json.load(r)["revoked"]]
    assert listed == [decision_id], listed
    out = subprocess.run([binary, "grant", "verify", grant, "--jwks", f"{base}/.well-known/jwks.json",
                          "--revocations", f"{base}/revocations", "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and json.loads(out.stdout)["code"] == "grant.revoked", out.stdout
    print("revocation: command accepted, grant event and revocation list agree, grant verify refuses it")


def check_usage_report(bootstrap, topics, idp, grant, run):
    claims = jwt.decode(grant, options={"verify_signature": False})
    host = token(idp, {"sub": claims["aud"], "roles": ["data_host"]})
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, units in enumerate([1, 2]):
        report = {"schema": "tollgate.usage_report/v1", "report_id": f"ext-{run}-report-{i}",
                  "decision_id": claims["jti"], "dataset": claims["dataset"], "operation": "query", "units": units,
                  "unit": "call", "served_from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["iat"])),
                  "served_to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": host}
        producer.produce(topics["usage_reports"], key=claims["jti"].encode(), value=json.dumps(report).encode())
    assert producer.flush(30) == 0, "reports not acknowledged"
    replies = sorted((r for r in consume(bootstrap, topics["replies"], 3) if r["command"] == "usage_report"),
                     key=lambda r: r["command_id"])
    assert [(r["outcome"], [x["code"] for x in r["reasons"]]) for r in replies] == \
        [("accepted", []), ("accepted", ["usage.exceeds_grant"])], replies
    reported = sorted((u for u in consume(bootstrap, topics["usage"], 42) if u.get("basis") == "report"),
                      key=lambda u: u["quantity"])
    # Charged per call at approval: the reports carry 0 fen.
    assert [(u["quantity"], u["amount_fen"], u["decision_id"]) for u in reported] == \
        [(1, 0, claims["jti"]), (2, 0, claims["jti"])], reported
    print("usage reports: accepted, the one beyond the grant flagged, recorded with basis report")


def consume(bootstrap, topic, n, within=120):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    c.subscribe([topic])
    out, deadline = [], time.time() + within
    while len(out) < n and time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            out.append(json.loads(m.value()))
    c.close()
    assert len(out) == n, f"{len(out)} of {n} messages on {topic}"
    return out


def assert_committed(bootstrap, topics, run, partition, want):
    """The group's committed offset on the partition: past every input."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tollgate-ext{run}", "enable.auto.commit": False})
    [tp] = c.committed([TopicPartition(topics["requests"], partition)], timeout=10)
    c.close()
    assert tp.offset == want, f"partition {partition}: committed {tp.offset}, want {want}"


if __name__ == "__main__":
    main(*sys.argv[1:])
