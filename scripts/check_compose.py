#!/usr/bin/env python3
"""Static check of docker-compose.yml (no Docker needed): parse it with PyYAML and verify that

- every service has ``image`` or ``build`` (and a ``build`` context holds its Dockerfile);
- long-running services have a ``healthcheck`` (all but ``beat`` and one-shot jobs);
- every ``depends_on`` target exists, with a valid condition; ``service_healthy`` targets have a healthcheck;
- named volumes used by services are declared; the app services get the environment the settings read;
- web runs several processes behind its port: ``--workers`` with a number or ``${FLEET_WEB_PROCESSES...}``;
- web and the Dockerfile's CMD pass the websocket options of ``make run`` (scripts/webserver.py);
- the Dockerfile starts FROM python:3.11-slim-bookworm.

    .venv/bin/python scripts/check_compose.py [docker-compose.yml]     exit 0 = ok, 1 = problems listed
Importable: ``check(path) -> list[str]`` (empty when fine).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import webserver  # noqa: E402  (scripts/webserver.py: the web process's websocket options)

ROOT = Path(__file__).resolve().parent.parent
NO_HEALTHCHECK = {"beat", "migrate"}      # beat has no port to probe; migrate exits
APP_ENV = {"DATABASE_URL", "REDIS_URL", "ETCD_ENDPOINTS", "SECRET_KEY", "FLEET_PUBLIC_URL", "FLEET_MEDIA_ROOT"}
APP_SERVICES = {"web", "worker", "beat"}
REQUIRED = {"web", "worker", "beat", "redis", "etcd", "postgres"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _env_names(env) -> set[str]:
    if isinstance(env, dict):
        return set(env)
    if isinstance(env, list):
        return {str(item).split("=", 1)[0] for item in env}
    return set()


def _args(command) -> list[str]:
    return command.split() if isinstance(command, str) else [str(a) for a in command or []]


def _web_workers_problems(command) -> list[str]:
    args = _args(command)
    if "--workers" not in args or args.index("--workers") + 1 >= len(args):
        return ["web: command lacks --workers N (FLEET_WEB_PROCESSES web processes behind one port)"]
    value = args[args.index("--workers") + 1]
    if not (value.isdigit() and int(value) >= 1) and not value.startswith("${FLEET_WEB_PROCESSES"):
        return [f"web: --workers {value!r} is neither a number nor ${{FLEET_WEB_PROCESSES:-N}}"]
    return []


def _dockerfile_cmd(text: str) -> list[str]:
    """The last CMD of a Dockerfile in its exec (JSON) form, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    cmds = [ln.strip()[3:].strip() for ln in joined.splitlines() if ln.strip().upper().startswith("CMD ")]
    if not cmds:
        return []
    try:
        args = json.loads(cmds[-1])
    except ValueError:
        return cmds[-1].split()
    return [str(a) for a in args] if isinstance(args, list) else []


def check(path: str | Path = ROOT / "docker-compose.yml") -> list[str]:
    path = Path(path)
    problems: list[str] = []
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: cannot parse: {exc}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return [f"{path}: no services mapping"]
    services: dict = doc["services"]
    declared_volumes = set((doc.get("volumes") or {}).keys())
    for name in sorted(REQUIRED - set(services)):
        problems.append(f"service {name!r} is missing")

    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"{name}: not a mapping")
            continue
        if not svc.get("image") and not svc.get("build"):
            problems.append(f"{name}: neither image nor build")
        build = svc.get("build")
        if build:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (path.parent / ctx / dockerfile).is_file():
                problems.append(f"{name}: build file {ctx}/{dockerfile} does not exist")
        if name not in NO_HEALTHCHECK:
            hc = svc.get("healthcheck")
            if not isinstance(hc, dict) or not hc.get("test"):
                problems.append(f"{name}: no healthcheck")
        deps = svc.get("depends_on") or {}
        items = deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)
        for dep, spec in items:
            if dep not in services:
                problems.append(f"{name}: depends_on {dep!r}, which is not a service")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond not in CONDITIONS:
                problems.append(f"{name}: depends_on {dep}: unknown condition {cond!r}")
            if cond == "service_healthy" and not (services[dep] or {}).get("healthcheck"):
                problems.append(f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else (vol or {}).get("source", "")
            if source and not source.startswith((".", "/", "~", "$")) and source not in declared_volumes:
                problems.append(f"{name}: volume {source!r} is not declared under top-level volumes")
        if name in APP_SERVICES:
            missing = APP_ENV - _env_names(svc.get("environment"))
            if missing:
                problems.append(f"{name}: environment lacks {', '.join(sorted(missing))}")
            if not svc.get("command"):
                problems.append(f"{name}: no command")
        if name == "web":
            problems += _web_workers_problems(svc.get("command"))
            problems += [f"web: command lacks {option} (scripts/webserver.py)"
                         for option in webserver.missing_from(_args(svc.get("command")))]

    dockerfile = path.parent / "Dockerfile"
    if dockerfile.is_file():
        first_from = next((ln.split()[1] for ln in dockerfile.read_text().splitlines()
                           if ln.strip().upper().startswith("FROM ")), "")
        if first_from != "python:3.11-slim-bookworm":
            problems.append(f"Dockerfile: FROM {first_from!r}, expected python:3.11-slim-bookworm")
        problems += [f"Dockerfile: CMD lacks {option} (scripts/webserver.py)"
                     for option in webserver.missing_from(_dockerfile_cmd(dockerfile.read_text()))]
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "docker-compose.yml"
    problems = check(path)
    for p in problems:
        print(f"check_compose: {p}", file=sys.stderr)
    if not problems:
        print(f"check_compose: {path.name} ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
