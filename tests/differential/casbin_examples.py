#!/usr/bin/env python3
"""Casbin's reference model shapes, decided by tollgate and by pycasbin.

One case per kind of model Casbin documents (basic ACL and its variants,
RBAC, resource roles, domains, deny-override, allow-and-deny, priority
implicit and explicit, keyMatch 1-5, regexMatch, ipMatch, globMatch,
ABAC, operator precedence, several role definitions). Each case is a model,
a policy and, per request field, the values to try; the requests are every
combination (sampled when there are too many). `tollgate policy eval --raw`
must answer each request as pycasbin does, or refuse the model at load
with a message (never decide differently). Where pycasbin and Go casbin
disagree, the case says so and holds tollgate to Go's answer.

    python3 tests/differential/casbin_examples.py TOLLGATE_BINARY

Needs `pip install casbin`. Exits 1 on any mismatch.
"""
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile

import casbin

REQUEST = "[request_definition]\nr = {r}\n"
POLICY = "[policy_definition]\np = {p}\n"
ROLES = "[role_definition]\n{g}\n"
EFFECT = "[policy_effect]\ne = {e}\n"
MATCHER = "[matchers]\nm = {m}\n"
ALLOW = "some(where (p.eft == allow))"
DENY_OVERRIDE = "!some(where (p.eft == deny))"
ALLOW_AND_DENY = "some(where (p.eft == allow)) && !some(where (p.eft == deny))"
PRIORITY = "priority(p.eft) || deny"


def model(r="sub, obj, act", p="sub, obj, act", g=None, e=ALLOW, m="r.sub == p.sub && r.obj == p.obj && r.act == p.act"):
    text = REQUEST.format(r=r) + POLICY.format(p=p)
    if g:
        text += ROLES.format(g=g)
    return text + EFFECT.format(e=e) + MATCHER.format(m=m)


SUBJECTS = ["alice", "bob", "carol", "dave", "admin", "nobody"]
OBJECTS = ["data1", "data2", "data3"]
ACTIONS = ["read", "write"]

CASES = [
    # --- ACL and its variants -------------------------------------------
    dict(name="basic", model=model(),
         policy="p, alice, data1, read\np, bob, data2, write\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    dict(name="basic_with_root", model=model(m="r.sub == p.sub && r.obj == p.obj && r.act == p.act || r.sub == \"root\""),
         policy="p, alice, data1, read\np, bob, data2, write\n",
         values=[SUBJECTS + ["root"], OBJECTS, ACTIONS]),
    dict(name="basic_without_users", model=model(r="obj, act", p="obj, act", m="r.obj == p.obj && r.act == p.act"),
         policy="p, data1, read\np, data2, write\n",
         values=[OBJECTS, ACTIONS]),
    dict(name="basic_without_resources", model=model(r="sub, act", p="sub, act", m="r.sub == p.sub && r.act == p.act"),
         policy="p, alice, read\np, bob, write\n",
         values=[SUBJECTS, ACTIONS]),
    # `a && b && c || d` is `(a && b && c) || d`: a rule whose action is
    # "*" allows everyone, on every object.
    dict(name="precedence", model=model(m="r.sub == p.sub && r.obj == p.obj && r.act == p.act || p.act == \"*\""),
         policy="p, alice, data1, read\np, bob, data2, *\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    dict(name="negation", model=model(m="r.sub == p.sub && !(r.obj == p.obj) && r.act == p.act"),
         policy="p, alice, data1, read\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    # --- RBAC ---------------------------------------------------------------
    dict(name="rbac", model=model(g="g = _, _", m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, alice, data1, read\np, bob, data2, write\np, data2_admin, data2, read\n"
                "p, data2_admin, data2, write\ng, alice, data2_admin\ng, carol, alice\n",
         values=[SUBJECTS + ["data2_admin"], OBJECTS, ACTIONS]),
    dict(name="rbac_cycle", model=model(g="g = _, _", m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, r1, data1, read\ng, alice, r1\ng, r1, r2\ng, r2, r1\ng, bob, r2\n",
         values=[SUBJECTS + ["r1", "r2"], OBJECTS, ACTIONS]),
    dict(name="rbac_deep_hierarchy", model=model(g="g = _, _", m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, l0, data1, read\n" + "".join(f"g, l{i + 1}, l{i}\n" for i in range(14)),
         values=[[f"l{i}" for i in range(15)], OBJECTS, ["read"]]),
    # `g` links subjects, `g2` links objects: a subject link never puts an
    # object in a group (casbin-rs alone shares one role manager).
    dict(name="rbac_resource_roles",
         model=model(g="g = _, _\ng2 = _, _", m="g(r.sub, p.sub) && g2(r.obj, p.obj) && r.act == p.act"),
         policy="p, alice, data_group, read\np, writers, data_group, write\np, alice, writers, read\n"
                "g, bob, writers\ng, data3, data_group\ng, data1, writers\n"
                "g2, data1, data_group\ng2, data2, data_group\n",
         values=[SUBJECTS + ["writers"], OBJECTS + ["data_group", "writers"], ACTIONS]),
    dict(name="rbac_resource_roles_patterns",
         model=model(g="g = _, _\ng2 = _, _", m="g(r.sub, p.sub) && g2(r.obj, p.obj) && regexMatch(r.act, p.act)"),
         policy="p, alice, data_group, read\np, writers, data_group, (read)|(write)\n"
                "g, bob, writers\ng, data3, data_group\ng2, data1, data_group\ng2, data2, writers\n",
         values=[SUBJECTS + ["writers"], OBJECTS + ["data_group", "writers"], ACTIONS]),
    dict(name="rbac_domains",
         model=model(r="sub, dom, obj, act", p="sub, dom, obj, act", g="g = _, _, _",
                     m="g(r.sub, p.sub, r.dom) && r.dom == p.dom && r.obj == p.obj && r.act == p.act"),
         policy="p, admin, domain1, data1, read\np, admin, domain1, data1, write\np, admin, domain2, data2, read\n"
                "p, admin, domain2, data2, write\ng, alice, admin, domain1\ng, bob, admin, domain2\n",
         values=[SUBJECTS, ["domain1", "domain2", "domain3"], OBJECTS, ACTIONS]),
    dict(name="rbac_domains_and_object_groups",
         model=model(r="sub, dom, obj, act", p="sub, dom, obj, act", g="g = _, _, _\ng2 = _, _",
                     m="g(r.sub, p.sub, r.dom) && r.dom == p.dom && g2(r.obj, p.obj) && r.act == p.act"),
         policy="p, admin, domain1, docs, read\np, bob, domain2, data1, write\n"
                "g, alice, admin, domain1\ng, data2, admin, domain1\ng2, data1, docs\ng2, data2, docs\n",
         values=[SUBJECTS, ["domain1", "domain2"], OBJECTS + ["docs", "admin"], ACTIONS]),
    # --- effects ------------------------------------------------------------
    dict(name="rbac_with_deny",
         model=model(p="sub, obj, act, eft", g="g = _, _", e=ALLOW_AND_DENY,
                     m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, alice, data1, read, allow\np, bob, data2, write, allow\np, data2_admin, data2, read, allow\n"
                "p, data2_admin, data2, write, allow\np, alice, data2, write, deny\ng, alice, data2_admin\n",
         values=[SUBJECTS + ["data2_admin"], OBJECTS, ACTIONS]),
    dict(name="deny_override",
         model=model(p="sub, obj, act, eft", g="g = _, _", e=DENY_OVERRIDE,
                     m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, alice, data1, read, deny\np, staff, data2, write, deny\ng, bob, staff\n",
         values=[SUBJECTS + ["staff"], OBJECTS, ACTIONS]),
    dict(name="priority_implicit",
         model=model(p="sub, obj, act, eft", g="g = _, _", e=PRIORITY,
                     m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, alice, data1, read, allow\np, data1_deny_group, data1, read, deny\n"
                "p, data1_deny_group, data1, write, deny\np, alice, data1, write, allow\n"
                "g, alice, data1_deny_group\np, data2_allow_group, data2, read, allow\n"
                "p, bob, data2, read, deny\np, bob, data2, write, deny\ng, bob, data2_allow_group\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    # Written out of order on purpose: Casbin sorts by the priority field.
    dict(name="priority_explicit",
         model=model(p="priority, sub, obj, act, eft", g="g = _, _", e=PRIORITY,
                     m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, 10, data1_deny_group, data1, read, deny\np, 10, data1_deny_group, data1, write, deny\n"
                "p, 10, data2_allow_group, data2, read, allow\np, 10, data2_allow_group, data2, write, allow\n"
                "p, 1, alice, data1, write, allow\np, 1, alice, data1, read, allow\np, 1, bob, data2, read, deny\n"
                "g, bob, data2_allow_group\ng, alice, data1_deny_group\n"
                "p, 2, carol, data3, read, deny\np, 1, carol, data3, read, allow\n"
                "p, 0, dave, data3, read, allow\np, 50, dave, data3, read, deny\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    # No reference order for a priority that is not a number: pycasbin
    # fails to load it, Go casbin's comparator is inconsistent. Refused.
    dict(name="priority_not_a_number", refuse="not an integer",
         model=model(p="priority, sub, obj, act, eft", g="g = _, _", e=PRIORITY,
                     m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, 1, alice, data1, read, allow\np, high, bob, data1, read, allow\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    # Go casbin's subject priority; casbin-rs has no evaluation for it.
    dict(name="subject_priority", refuse="is not supported",
         model=model(p="sub, obj, act, eft", g="g = _, _", e="subjectPriority(p.eft) || deny",
                     m="g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, root, data1, read, deny\np, admin, data1, read, allow\ng, admin, root\ng, alice, admin\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    # --- pattern functions ---------------------------------------------------
    dict(name="keymatch",
         model=model(m="r.sub == p.sub && keyMatch(r.obj, p.obj) && regexMatch(r.act, p.act)"),
         policy="p, alice, /alice_data/*, GET\np, alice, /alice_data/resource1, POST\n"
                "p, bob, /alice_data/resource2, GET\np, bob, /bob_data/*, POST\np, cathy, /cathy_data, (GET)|(POST)\n",
         values=[["alice", "bob", "cathy"],
                 ["/alice_data/resource1", "/alice_data/resource2", "/alice_data", "/bob_data/resource1",
                  "/bob_data/", "/cathy_data", "/cathy_data/x", "/alice_data/数据"],
                 ["GET", "POST", "DELETE", "GETX"]]),
    dict(name="keymatch2",
         model=model(m="r.sub == p.sub && keyMatch2(r.obj, p.obj) && r.act == p.act"),
         policy="p, alice, /alice_data/:resource, GET\np, alice, /alice_data2/:id/using/:resId, GET\n"
                "p, bob, /bob_data/*, GET\np, bob, /literal/:, GET\np, carol, /files/:name.txt, GET\n",
         values=[["alice", "bob", "carol"],
                 ["/alice_data/resource1", "/alice_data/", "/alice_data/a/b", "/alice_data2/1/using/2",
                  "/alice_data2/1/using/", "/bob_data/x/y", "/literal/:", "/literal/x", "/files/a.txt",
                  "/files/a.txtx"],
                 ["GET"]]),
    dict(name="keymatch3",
         model=model(m="r.sub == p.sub && keyMatch3(r.obj, p.obj) && r.act == p.act"),
         policy="p, alice, /alice_data/{resource}, GET\np, alice, /alice_data2/{id}/using/{resId}, GET\n"
                "p, bob, /literal/{}, GET\np, bob, /any/*, GET\n",
         values=[["alice", "bob"],
                 ["/alice_data/resource1", "/alice_data/", "/alice_data2/1/using/2", "/alice_data2//using/2",
                  "/literal/{}", "/literal/x", "/any/a/b"],
                 ["GET"]]),
    dict(name="keymatch4",
         model=model(m="r.sub == p.sub && keyMatch4(r.obj, p.obj) && r.act == p.act"),
         policy="p, alice, /parent/{id}/child/{id}, GET\np, alice, /parent/{id}/child/{another_id}, POST\n",
         values=[["alice"], ["/parent/123/child/123", "/parent/123/child/456", "/parent//child/1"], ["GET", "POST"]]),
    dict(name="keymatch5",
         model=model(m="r.sub == p.sub && keyMatch5(r.obj, p.obj) && r.act == p.act"),
         policy="p, alice, /alice_data/{id}/book, GET\np, alice, /static/*, GET\n",
         values=[["alice"], ["/alice_data/1/book", "/alice_data/1/book?status=1", "/alice_data/1/book/x?x=1",
                             "/static/a.css?v=2", "/static"], ["GET"]]),
    # regexMatch searches anywhere in Go (regexp.MatchString) and casbin-rs;
    # pycasbin matches only at the start (re.match).
    dict(name="regex", go={("bob", "annual_report", "read"): True, ("bob", "annual_report", "reading"): True},
         model=model(m="r.sub == p.sub && regexMatch(r.obj, p.obj) && regexMatch(r.act, p.act)"),
         policy="p, alice, ^/data/[0-9]+$, (read)|(write)\np, bob, report, read\np, carol, ^/a{2}$, read\n",
         values=[["alice", "bob", "carol"], ["/data/1", "/data/12", "/data/x", "annual_report", "/aa", "/a"],
                 ["read", "write", "reading"]]),
    dict(name="ipmatch",
         model=model(m="ipMatch(r.sub, p.sub) && r.obj == p.obj && r.act == p.act"),
         policy="p, 192.168.2.0/24, data1, read\np, 10.0.0.0/16, data2, write\np, 10.1.2.3, data1, read\n"
                "p, 2001:db8::/32, data1, read\n",
         values=[["192.168.2.123", "192.168.3.1", "10.0.255.1", "10.1.2.3", "10.1.2.4", "2001:db8::1", "2001:db9::1"],
                 OBJECTS, ACTIONS]),
    dict(name="glob",
         model=model(m="r.sub == p.sub && globMatch(r.obj, p.obj) && r.act == p.act"),
         policy="p, u1, /foo/*, read\np, u2, /foo*, read\np, u3, /*/foo/*, read\np, u4, /data/file?.csv, read\n"
                "p, u5, /data/[a-c]*, read\n",
         values=[["u1", "u2", "u3", "u4", "u5"],
                 ["/foo", "/foo/subprefix", "/foo/a/b", "/foobar", "/prefix/foo/x", "/a/b/foo/x",
                  "/data/file1.csv", "/data/file12.csv", "/data/beta", "/data/delta"],
                 ["read"]]),
    dict(name="keymatch_rbac_domains",
         model=model(r="sub, dom, obj, act", p="sub, dom, obj, act", g="g = _, _, _",
                     m="g(r.sub, p.sub, r.dom) && keyMatch(r.dom, p.dom) && keyMatch(r.obj, p.obj) "
                       "&& regexMatch(r.act, p.act)"),
         policy="p, admin, domain1, data1, (read)|(write)\np, admin, domain*, data2, read\n"
                "g, alice, admin, domain1\ng, bob, admin, domain2\n",
         values=[["alice", "bob", "admin"], ["domain1", "domain2"], ["data1", "data2"], ACTIONS]),
    # --- ABAC ------------------------------------------------------------------
    dict(name="abac_request_attributes",
         model=model(r="sub, obj, owner, act", p="act", m="r.sub == r.owner && r.act == p.act"),
         policy="p, read\n",
         values=[["alice", "bob"], ["data1"], ["alice", "bob"], ACTIONS]),
    # Rules that are expressions over the request (Casbin's "ABAC rule").
    dict(name="abac_rule_eval",
         model=model(p="sub_rule, obj, act", m="eval(p.sub_rule) && r.obj == p.obj && r.act == p.act"),
         policy='p, r.sub == "alice", data1, read\np, r.act == "write", data2, write\n'
                'p, r.sub != "bob" && r.obj == "data3", data3, read\n',
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    # Go's govaluate reads `in ('a', 'b')`; casbin-rs's expression language
    # does not, so the model is refused, never decided some other way.
    dict(name="in_operator", refuse="Failed to compile matcher",
         model=model(m="r.sub == p.sub && r.obj in ('data1', 'data2') && r.act == p.act"),
         policy="p, alice, data1, read\np, bob, data3, read\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
    dict(name="abac_without_policy_rules_matching",
         model=model(m="r.sub == \"admin\" || r.sub == p.sub && r.obj == p.obj && r.act == p.act"),
         policy="p, alice, data1, read\n",
         values=[SUBJECTS, OBJECTS, ACTIONS]),
]


def requests_of(values, rng, cap=2000):
    every = [list(r) for r in itertools.product(*values)]
    return every if len(every) <= cap else rng.sample(every, cap)


def run(binary, case, workdir, rng):
    name = case["name"]
    model_path = os.path.join(workdir, f"{name}.conf")
    policy_path = os.path.join(workdir, f"{name}.csv")
    with open(model_path, "w") as f:
        f.write(case["model"])
    with open(policy_path, "w") as f:
        f.write(case["policy"])
    requests = requests_of(case["values"], rng)
    proc = subprocess.run([binary, "policy", "eval", "--raw", "--model", model_path, "--policy", policy_path,
                           "--requests", "-"], input="".join(json.dumps(r) + "\n" for r in requests),
                          capture_output=True, text=True)
    expected_refusal = case.get("refuse")
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "(no message)"
        clean = "panicked" not in proc.stderr and proc.returncode == 1
        ok = clean and expected_refusal is not None and expected_refusal in message
        print(f"{name:<34} refused at load: {message}" + ("" if ok else "  <-- NOT AN EXPECTED, CLEAN REFUSAL"))
        return ("refused", 0 if ok else 1)
    if expected_refusal is not None:
        print(f"{name:<34} decided, but must be refused ({expected_refusal})")
        return ("decided", 1)
    answers = proc.stdout.split()
    e = casbin.Enforcer(model_path, policy_path)
    mismatches = 0
    for req, got in zip(requests, answers):
        want = case.get("go", {}).get(tuple(req), e.enforce(*req))
        if (got == "true") != want:
            mismatches += 1
            if mismatches <= 5:
                print(f"  MISMATCH {name}: {req}: tollgate {got}, pycasbin {want}")
    mismatches += abs(len(requests) - len(answers))
    go = len(case.get("go", {}))
    allowed = answers.count("true")
    print(f"{name:<34} {len(requests):>5} requests {allowed:>5} allowed  {mismatches} mismatches"
          + (f"  ({go} held to Go casbin's answer)" if go else ""))
    return ("decided", mismatches)


def main():
    binary = sys.argv[1]
    rng = random.Random(20261201)
    failed, outcomes = 0, {}
    with tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            outcome, bad = run(binary, case, workdir, rng)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            failed += bad
    print(f"casbin examples: {outcomes.get('decided', 0)} decided as pycasbin, "
          f"{outcomes.get('refused', 0)} refused at load, {failed} mismatches")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
