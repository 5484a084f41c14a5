#!/usr/bin/env python3
"""Checks docker-compose.yml as far as a machine without Docker can.

    tests/deploy/check_compose.py TOLLGATE_BINARY [--build]

- the file and every inline config in it parse as YAML;
- every environment variable given to tollgate is one tollgate reads: the
  TOLLGATE_* ones load (`tollgate config`, which refuses unknown keys) and
  land where they say, the others are OpenTelemetry's or the log's;
- the OTLP endpoint names the collector's service and the port of its
  OTLP/HTTP receiver, whose pipelines take traces and metrics;
- the image's health check asks the port tollgate listens on;
- the image's build stage uses the toolchain this machine builds with, copies
  paths that exist and, with --build, its cargo command is run here as is.
"""
import json
import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Read by tollgate besides its TOLLGATE_SECTION__KEY settings.
OTHER_VARS = {
    "RUST_LOG",
    "TOLLGATE_LOG_FORMAT",
    "TOLLGATE_CONFIG_FILE",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_BSP_SCHEDULE_DELAY",
}

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def env_of(service):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def check_settings(binary, env):
    for k in env:
        check(k.startswith("TOLLGATE_") or k in OTHER_VARS, f"tollgate reads no variable {k}")
    run_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    run_env.update(env)
    out = subprocess.run([binary, "config"], env=run_env, capture_output=True, text=True)
    check(out.returncode == 0, f"tollgate config refused the compose file's variables: {out.stderr.strip()}")
    if out.returncode != 0:
        return
    settings = json.loads(out.stdout)
    for k, v in env.items():
        if not k.startswith("TOLLGATE_") or k in OTHER_VARS:
            continue
        node = settings
        for part in k[len("TOLLGATE_"):].lower().split("__"):
            node = node.get(part) if isinstance(node, dict) else None
        want = json.loads(v) if v.startswith("[") else v
        got = node if not isinstance(node, (int, float)) or isinstance(node, bool) else str(node)
        if k == "TOLLGATE_DATABASE__URL":
            want = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", v)
        check(got == want, f"{k}={v!r} is read as {node!r}")


def check_otlp(compose, env):
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    check(endpoint is not None, "tollgate is given no OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint is None:
        return
    check(env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") in ("http/protobuf", "http/json"),
          "tollgate exports OTLP over HTTP only")
    url = urlparse(endpoint)
    collector = compose["services"].get(url.hostname)
    check(collector is not None, f"{endpoint}: no service named {url.hostname}")
    if collector is None:
        return
    targets = {c["target"]: c["source"] for c in collector.get("configs", [])}
    config_arg = next(a.split("=", 1)[1] for a in collector.get("command", []) if a.startswith("--config="))
    config = yaml.safe_load(compose["configs"][targets[config_arg]]["content"])
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    check(http.rsplit(":", 1)[1] == str(url.port), f"{endpoint}: the collector's OTLP/HTTP receiver is on {http}")
    pipelines = config["service"]["pipelines"]
    for signal in ("traces", "metrics"):
        check("otlp" in pipelines.get(signal, {}).get("receivers", []), f"the collector has no {signal} pipeline from otlp")


def check_image(service, env, build):
    listen_port = env.get("TOLLGATE_SERVICE__HTTP_LISTEN", "127.0.0.1:9464").rsplit(":", 1)[1]
    health = " ".join(service["healthcheck"]["test"])
    check(f"localhost:{listen_port}/readyz" in health, f"the health check does not ask :{listen_port}/readyz: {health}")
    dockerfile = service["build"]["dockerfile_inline"]
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split()[1]
    image = re.search(r"FROM rust:([0-9.]+)", dockerfile).group(1)
    check(rustc.startswith(image), f"the image builds with rust {image}, this machine (and CI) with {rustc}")
    for src in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
        check(src == "." or os.path.exists(os.path.join(ROOT, src)), f"COPY {src}: no such path")
    commands = re.findall(r"^RUN (cargo .*)$", dockerfile, re.M)
    check(commands == ["cargo build --release --locked --bin tollgate"], f"the image builds with {commands}")
    if build:
        for c in commands:
            out = subprocess.run(c.split(), cwd=ROOT)
            check(out.returncode == 0, f"{c} failed here")


def main():
    binary, build = sys.argv[1], "--build" in sys.argv[2:]
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    for name, c in compose.get("configs", {}).items():
        yaml.safe_load(c["content"])  # raises if it does not parse
    service = compose["services"]["tollgate"]
    env = env_of(service)
    check_settings(binary, env)
    check_otlp(compose, env)
    check_image(service, env, build)
    for f in failures:
        print(f"docker-compose.yml: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"docker-compose.yml: {len(env)} variables, the collector and the image agree")


if __name__ == "__main__":
    main()
