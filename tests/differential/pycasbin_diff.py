#!/usr/bin/env python3
"""Differential test: tollgate's policy engine against pycasbin, an
independent Casbin implementation.

For several standard models (ACL, RBAC, RBAC with deny, RBAC with domains,
resource roles, keyMatch, regexMatch, priority) and tollgate's own model with generated rules, it writes the model
and policy files, generates requests, and compares `tollgate policy eval
--raw` (the indexed engine, or casbin-rs where the model is not indexable)
with pycasbin's `enforce`, line by line.

    python3 tests/differential/pycasbin_diff.py TOLLGATE_BINARY [REQUESTS_PER_MODEL]

Needs `pip install casbin`. Exits 1 on any mismatch.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

import casbin

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

ACL = """[request_definition]
r = sub, obj, act
[policy_definition]
p = sub, obj, act
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
"""
RBAC = ACL.replace("[policy_effect]", "[role_definition]\ng = _, _\n[policy_effect]").replace(
    "r.sub == p.sub", "g(r.sub, p.sub)")
RBAC_DENY = RBAC.replace("p = sub, obj, act", "p = sub, obj, act, eft").replace(
    "e = some(where (p.eft == allow))", "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))")
DOMAINS = """[request_definition]
r = sub, dom, obj, act
[policy_definition]
p = sub, dom, obj, act
[role_definition]
g = _, _, _
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && r.obj == p.obj && r.act == p.act
"""
RESOURCE_ROLES = RBAC.replace("g = _, _", "g = _, _\ng2 = _, _").replace("r.obj == p.obj", "g2(r.obj, p.obj)")
KEYMATCH = ACL.replace("r.obj == p.obj", "keyMatch(r.obj, p.obj)")
REGEX = ACL.replace("r.obj == p.obj && r.act == p.act", "keyMatch2(r.obj, p.obj) && regexMatch(r.act, p.act)")
PRIORITY = """[request_definition]
r = sub, obj, act
[policy_definition]
p = sub, obj, act, eft
[role_definition]
g = _, _
[policy_effect]
e = priority(p.eft) || deny
[matchers]
m = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act
"""

# Explicit priority: reference Casbin sorts rules by the priority field
# when it loads them (lower first, ties in file order), whatever order
# they are written in.
PRIORITY_EXPLICIT = PRIORITY.replace("p = sub, obj, act, eft", "p = priority, sub, obj, act, eft")

ACTS = ["read", "write", "delete"]
OPS = ["query", "download", "api_call", "model_training", "privacy_compute", "verification"]


def flat(rng, n_rules, with_eft=False, roles=False):
    users = [f"u{i}" for i in range(n_rules // 3 + 2)]
    role_names = [f"r{i}" for i in range(n_rules // 10 + 2)]
    objs = [f"o{i}" for i in range(n_rules // 4 + 2)]
    lines = []
    subjects = role_names + users if roles else users
    for _ in range(n_rules):
        eft = ", " + ("deny" if rng.random() < 0.15 else "allow") if with_eft else ""
        lines.append(f"p, {rng.choice(subjects)}, {rng.choice(objs)}, {rng.choice(ACTS)}{eft}")
    if roles:
        for u in users:
            lines.append(f"g, {u}, {rng.choice(role_names)}")
        for i in range(1, len(role_names), 3):
            lines.append(f"g, {role_names[i]}, {role_names[i - 1]}")
    members = {}
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if parts[0] == "g":
            members.setdefault(parts[2], []).append(parts[1])
    rules = [[p.strip() for p in line.split(",")] for line in lines if line.startswith("p,")]
    requests = []
    for _ in range(REQUESTS):
        if rng.random() < 0.5:
            # Aim at a rule, through a member of its role where it names one.
            rule = rng.choice(rules)
            requests.append([rng.choice(members.get(rule[1], [rule[1]])), rule[2], rule[3]])
        else:
            requests.append([rng.choice(users + ["nobody"]), rng.choice(objs + ["o-x"]), rng.choice(ACTS)])
    return "\n".join(lines) + "\n", requests


def explicit_priority(rng, n_rules):
    """Rules with random priorities (ties included) in random order, many
    through roles, so a later low-priority allow must beat an earlier
    high-priority deny of one of the user's roles."""
    policy, requests = flat(rng, n_rules, with_eft=True, roles=True)
    lines = []
    for line in policy.splitlines():
        if line.startswith("p,"):
            lines.append(line.replace("p, ", f"p, {rng.randrange(0, 40)}, ", 1))
        else:
            lines.append(line)
    rng.shuffle(lines)
    return "\n".join(lines) + "\n", requests


def domains(rng, n_rules):
    doms = [f"d{i}" for i in range(4)]
    users = [f"u{i}" for i in range(n_rules // 3)]
    roles = [f"role{i}" for i in range(6)]
    objs = [f"o{i}" for i in range(n_rules // 4)]
    lines = [f"p, {rng.choice(roles)}, {rng.choice(doms)}, {rng.choice(objs)}, {rng.choice(ACTS)}" for _ in range(n_rules)]
    lines += [f"g, {u}, {rng.choice(roles)}, {rng.choice(doms)}" for u in users]
    members = {}
    for u_line in lines:
        parts = [p.strip() for p in u_line.split(",")]
        if parts[0] == "g":
            members.setdefault((parts[2], parts[3]), []).append(parts[1])
    rules = [[p.strip() for p in line.split(",")] for line in lines if line.startswith("p,")]
    requests = []
    for _ in range(REQUESTS):
        rule = rng.choice(rules)
        if rng.random() < 0.5 and (rule[1], rule[2]) in members:
            requests.append([rng.choice(members[(rule[1], rule[2])]), rule[2], rule[3], rule[4]])
        else:
            requests.append([rng.choice(users), rng.choice(doms), rng.choice(objs), rng.choice(ACTS)])
    return "\n".join(lines) + "\n", requests


def keymatch(rng, n_rules):
    users = [f"u{i}" for i in range(n_rules // 3 + 2)]
    lines = [f"p, {rng.choice(users)}, /res{rng.randrange(20)}/*, {rng.choice(ACTS)}" for _ in range(n_rules)]
    requests = [[rng.choice(users), f"/res{rng.randrange(22)}/item{rng.randrange(5)}", rng.choice(ACTS)] for _ in range(REQUESTS)]
    return "\n".join(lines) + "\n", requests


def keymatch_unicode(rng, n_rules):
    """Request paths with multi-byte characters where a pattern's `*` falls
    (casbin-rs itself panics on these)."""
    policy, _ = keymatch(rng, n_rules)
    users = sorted({line.split(", ")[1] for line in policy.splitlines()})
    segs = ["数据", "x数据", "rés", "re数", "res1", "ré"]
    requests = [[rng.choice(users), f"/{rng.choice(segs)}{rng.randrange(22)}/{rng.choice(segs)}", rng.choice(ACTS)]
                for _ in range(REQUESTS)]
    return policy, requests


def regex(rng, n_rules):
    users = [f"u{i}" for i in range(n_rules // 3 + 2)]
    lines = [f"p, {rng.choice(users)}, /res{rng.randrange(20)}/:id, {rng.choice(['(read)|(write)', 'read', 'delete'])}"
             for _ in range(n_rules)]
    requests = [[rng.choice(users), f"/res{rng.randrange(22)}/{rng.randrange(5)}", rng.choice(ACTS)] for _ in range(REQUESTS)]
    return "\n".join(lines) + "\n", requests


def resource_roles(rng, n_rules):
    """Subject roles (`g`) and object groups (`g2`) drawn from the same
    names, with `g` links between objects too: a `g` link must never count
    for `g2` (casbin-rs alone shares one role manager between them)."""
    users = [f"u{i}" for i in range(n_rules // 4 + 2)]
    objs = [f"o{i}" for i in range(n_rules // 4 + 2)]
    groups = [f"grp{i}" for i in range(n_rules // 10 + 2)]
    lines = [f"p, {rng.choice(users + groups)}, {rng.choice(objs + groups)}, {rng.choice(ACTS)}" for _ in range(n_rules)]
    lines += [f"g, {u}, {rng.choice(groups)}" for u in users]
    lines += [f"g, {o}, {rng.choice(groups)}" for o in rng.sample(objs, len(objs) // 2)]
    lines += [f"g2, {o}, {rng.choice(groups)}" for o in rng.sample(objs, len(objs) // 2)]
    rng.shuffle(lines)
    requests = [[rng.choice(users), rng.choice(objs), rng.choice(ACTS)] for _ in range(REQUESTS)]
    return "\n".join(lines) + "\n", requests


def tollgate_model(rng, n_rules):
    doms = [f"scn{i}" for i in range(5)]
    roles = [f"role{i}" for i in range(8)]
    ents = [f"ent{i}" for i in range(n_rules // 3)]
    objs = [f"ds{i}" for i in range(n_rules // 3)]
    groups = [f"grp{i}" for i in range(8)]
    lines = []
    for o in objs:
        lines.append(f"g2, {o}, {rng.choice(groups)}")
    for i in range(1, len(groups), 3):
        lines.append(f"g2, {groups[i]}, {groups[i - 1]}")
    for e in ents:
        lines.append(f"g, {e}, {rng.choice(roles)}, {rng.choice(doms)}")
    for d in doms:
        lines.append(f"g, {roles[7]}, {roles[0]}, {d}")
    for _ in range(n_rules):
        sub = "*" if rng.random() < 0.05 else rng.choice(roles)
        dom = "*" if rng.random() < 0.05 else rng.choice(doms)
        obj = rng.choice(groups) if rng.random() < 0.6 else rng.choice(objs)
        act = "*" if rng.random() < 0.05 else rng.choice(OPS)
        eft = "deny" if rng.random() < 0.1 else "allow"
        lines.append(f"p, {sub}, {dom}, {obj}, {act}, {eft}")
    members, in_group = {}, {}
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if parts[0] == "g":
            members.setdefault((parts[2], parts[3]), []).append(parts[1])
        if parts[0] == "g2":
            in_group.setdefault(parts[2], []).append(parts[1])
    rules = [[p.strip() for p in line.split(",")] for line in lines if line.startswith("p,")]
    requests = []
    for _ in range(REQUESTS):
        rule = rng.choice(rules)
        dom = rule[2] if rule[2] != "*" else rng.choice(doms)
        if rng.random() < 0.6 and (rule[1], dom) in members:
            obj = rng.choice(in_group.get(rule[3], [rule[3]]))
            act = rule[4] if rule[4] != "*" else rng.choice(OPS)
            requests.append([rng.choice(members[(rule[1], dom)]), dom, obj, act])
        else:
            requests.append([rng.choice(ents + ["ent-x"]), rng.choice(doms), rng.choice(objs + ["ds-x"]), rng.choice(OPS)])
    return "\n".join(lines) + "\n", requests


def shipped(rng):
    with open(os.path.join(REPO, "policies", "policy.csv")) as f:
        policy = f.read()
    subs, doms, objs = set(), set(), set()
    for line in policy.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts[0] == "g" and len(parts) == 4:
            subs.add(parts[1]); doms.add(parts[3])
        if parts[0] == "g2":
            objs.add(parts[1])
    subs, doms, objs = sorted(subs), sorted(doms), sorted(objs)
    requests = [[rng.choice(subs), rng.choice(doms), rng.choice(objs), rng.choice(OPS)] for _ in range(REQUESTS)]
    return policy, requests


def run_case(binary, name, model, policy, requests, workdir):
    model_path = os.path.join(workdir, f"{name}.conf")
    policy_path = os.path.join(workdir, f"{name}.csv")
    with open(model_path, "w") as f:
        f.write(model)
    with open(policy_path, "w") as f:
        f.write(policy)
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    out = subprocess.run([binary, "policy", "eval", "--raw", "--model", model_path, "--policy", policy_path,
                          "--requests", "-"], input=lines, capture_output=True, text=True, check=True).stdout.split()
    e = casbin.Enforcer(model_path, policy_path)
    mismatches = 0
    allowed = 0
    for req, got in zip(requests, out):
        want = e.enforce(*req)
        allowed += want
        if (got == "true") != want:
            mismatches += 1
            if mismatches <= 5:
                print(f"  MISMATCH {name}: {req}: tollgate {got}, pycasbin {want}")
    if len(out) != len(requests):
        print(f"  {name}: tollgate answered {len(out)} of {len(requests)} requests")
        mismatches += abs(len(requests) - len(out))
    print(f"{name:<16} {len(requests):>6} requests  {allowed:>6} allowed  {mismatches} mismatches")
    return len(requests) - mismatches, mismatches


def main():
    binary = sys.argv[1]
    global REQUESTS
    REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rng = random.Random(20261126)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(REPO, "policies", "model.conf")) as f:
            tollgate_conf = f.read()
        cases = [
            ("acl", ACL, *flat(rng, 200)),
            ("rbac", RBAC, *flat(rng, 200, roles=True)),
            ("rbac_deny", RBAC_DENY, *flat(rng, 200, with_eft=True, roles=True)),
            ("rbac_domains", DOMAINS, *domains(rng, 200)),
            ("resource_roles", RESOURCE_ROLES, *resource_roles(rng, 200)),
            # The same through casbin-rs (keyMatch is not indexable).
            ("resource_roles_fb", RESOURCE_ROLES.replace("r.act == p.act", "keyMatch(r.act, p.act)"),
             *resource_roles(rng, 200)),
            ("keymatch", KEYMATCH, *keymatch(rng, 100)),
            ("keymatch_utf8", KEYMATCH, *keymatch_unicode(rng, 100)),
            ("regex", REGEX, *regex(rng, 100)),
            # Policy order is the priority: the first matching rule decides.
            ("priority", PRIORITY, *flat(rng, 200, with_eft=True, roles=True)),
            ("priority_explicit", PRIORITY_EXPLICIT, *explicit_priority(rng, 200)),
            ("tollgate_gen", tollgate_conf, *tollgate_model(rng, 300)),
            ("tollgate_shipped", tollgate_conf, *shipped(rng)),
        ]
        for name, model, policy, requests in cases:
            p, f = run_case(binary, name, model, policy, requests, workdir)
            passed += p
            failed += f
    print(f"differential: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


REQUESTS = 3000
if __name__ == "__main__":
    main()
