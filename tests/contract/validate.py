#!/usr/bin/env python3
"""The event contract as files, checked with an implementation that is not
tollgate's: every message is validated against the JSON Schemas of
asyncapi.yaml by Python's `jsonschema` (Draft 2020-12).

    validate.py asyncapi.yaml [--readme FILE.md]... [--jsonl FILE]... [--sqlite DB]

--readme     every ```json block of a Markdown file that names a tollgate schema
--jsonl      lines {"key", "payload"} (tests/golden/outputs.jsonl)
--sqlite     what a run stored: audit events, checkpoints, usage records and
             reports, every output stored with its input's outcome
             (decisions, replies, grant events, dead letters) — i.e. every
             message a demo run published — and the requests it decided

A message whose `schema` the document does not describe fails, as does a
schema field a message lacks or one it has that the document does not list.
Exits 1 on any failure. Needs `pip install pyyaml jsonschema`.
"""
import argparse
import json
import re
import sqlite3
import sys

import jsonschema
import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    assert doc.get("asyncapi", "").startswith("3."), "not an AsyncAPI 3 document"
    components = doc["components"]
    by_id = {}
    for name, message in components["messages"].items():
        ref = message["payload"]["$ref"]
        schema = {"$ref": ref, "components": components}
        jsonschema.Draft202012Validator.check_schema(schema)
        by_id[message["name"]] = jsonschema.Draft202012Validator(schema)
    for channel in doc["channels"].values():
        for m in channel["messages"].values():
            assert m["$ref"].split("/")[-1] in components["messages"], m
    return by_id


class Checker:
    def __init__(self, by_id):
        self.by_id, self.checked, self.failures, self.kinds = by_id, 0, [], set()

    def check(self, obj, where):
        sid = obj.get("schema") if isinstance(obj, dict) else None
        validator = self.by_id.get(sid)
        if validator is None:
            self.failures.append(f"{where}: no schema in the contract for {sid!r}")
            return
        self.checked += 1
        self.kinds.add(sid)
        for error in validator.iter_errors(obj):
            path = "/".join(str(p) for p in error.absolute_path)
            self.failures.append(f"{where}: {sid} at /{path}: {error.message}")


def readme(checker, path):
    text = open(path, encoding="utf-8").read()
    for n, block in enumerate(re.findall(r"```json\n(.*?)```", text, re.S)):
        obj = json.loads(block)
        if isinstance(obj, dict) and str(obj.get("schema", "")).startswith("tollgate."):
            checker.check(obj, f"{path} json block {n + 1}")


def jsonl(checker, path):
    for n, line in enumerate(open(path, encoding="utf-8")):
        checker.check(json.loads(json.loads(line)["payload"]), f"{path}:{n + 1}")


def stored(checker, path):
    db = sqlite3.connect(path)
    for table in ("audit_events", "audit_checkpoints", "usage_records", "usage_reports"):
        for (body,) in db.execute(f"SELECT body FROM {table}"):
            checker.check(json.loads(body), f"{path} {table}")
    # The requests as decided (stored without their token, for replay).
    for request_id, inputs in db.execute("SELECT request_id, inputs FROM decisions WHERE inputs IS NOT NULL"):
        checker.check(json.loads(inputs)["request"], f"{path} decision inputs of {request_id}")
    for key, outputs in db.execute("SELECT idem_key, outputs FROM outcomes"):
        for o in json.loads(outputs):
            if o.get("payload") is not None:
                checker.check(json.loads(o["payload"]), f"{path} outcome {key} ({o.get('stream')})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("asyncapi")
    p.add_argument("--readme", action="append", default=[])
    p.add_argument("--jsonl", action="append", default=[])
    p.add_argument("--sqlite")
    a = p.parse_args()
    checker = Checker(load(a.asyncapi))
    for path in a.readme:
        readme(checker, path)
    for path in a.jsonl:
        jsonl(checker, path)
    if a.sqlite:
        stored(checker, a.sqlite)
    for f in checker.failures[:40]:
        print("FAIL", f)
    print(f"{checker.checked} messages of {len(checker.kinds)} kinds checked against {a.asyncapi}: "
          f"{len(checker.failures)} failure(s); kinds seen: {', '.join(sorted(checker.kinds))}")
    sys.exit(1 if checker.failures or checker.checked == 0 else 0)


if __name__ == "__main__":
    main()
