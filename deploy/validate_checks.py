"""Consistency checks of the deployment files that no schema expresses; run by deploy/validate.

    python3 deploy/validate_checks.py SUBCOMMAND [ARGS]

Each subcommand prints one line of detail for the summary on success (exit 0), or what is
wrong on stderr (exit 1). Needs PyYAML (installed by deploy/validate in its venv).
"""

import configparser
import glob
import os
import re
import sys
import tomllib

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DEPLOY)
K8S = os.path.join(DEPLOY, "kubernetes")
COMPOSE = os.path.join(DEPLOY, "compose.yaml")
UNIT = os.path.join(DEPLOY, "systemd", "switchboard-gateway.service")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
GENERATED_CONFIG = os.path.join(DEPLOY, "switchboard.toml")
DEFAULT_SHUTDOWN_GRACE = 10.0  # the gateway's --shutdown-grace default


class Problem(Exception):
    pass


def rel(path):
    return os.path.relpath(path, ROOT)


def seconds(value):
    """A duration as the gateway (250ms, 10s, 5m, 1h), Compose (1m30s) or systemd writes it."""
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    total, pos = 0.0, 0
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    for m in re.finditer(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|)", s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise Problem(f"cannot read duration {value!r}")
    return total


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- kustomization ----------------------------------------------------------------------


def kustomization():
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    listed = list(k.get("resources", []))
    generated = [
        path
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", [])
        for path in [f.split("=", 1)[-1] for f in gen.get("files", [])] + gen.get("envs", [])
    ]
    problems = []
    for path in listed + generated:
        if not os.path.exists(os.path.join(K8S, path)):
            problems.append(f"kustomization.yaml names {path}, which does not exist")
    present = sorted(
        os.path.basename(p)
        for p in glob.glob(os.path.join(K8S, "*.yaml")) + glob.glob(os.path.join(K8S, "*.yml"))
    )
    examples = [p for p in present if p.endswith((".example.yaml", ".example.yml"))]
    for name in present:
        if name in ("kustomization.yaml", "kustomization.yml") or name in examples:
            continue
        if name not in listed:
            problems.append(f"{name} is not listed in kustomization.yaml resources")
    for path in glob.glob(os.path.join(K8S, "*")):
        name = os.path.basename(path)
        if name.endswith((".yaml", ".yml", ".md")) or name in generated:
            continue
        problems.append(f"{name} is neither a manifest nor used by a generator")
    if problems:
        raise Problem("\n".join(problems))
    return (
        f"{len(listed)} manifests listed, {len(generated)} generator file(s), "
        f"{len(examples)} example(s) kept out on purpose"
    )


def manifests():
    """Every manifest file to validate one by one: each YAML file but the kustomization
    (listed resources, examples, and any stray file, which the kustomization check fails)."""
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")) + glob.glob(os.path.join(K8S, "*.yml")))
    return "\n".join(f for f in files if os.path.basename(f) not in ("kustomization.yaml", "kustomization.yml"))


# ---- configuration files -----------------------------------------------------------------


def compose_config_text():
    with open(COMPOSE) as f:
        c = yaml.safe_load(f)
    return c["configs"]["switchboard"]["content"]


def config_files(outdir):
    """Parses every gateway TOML file; writes Compose's inline one to outdir. Prints paths."""
    paths = [os.path.join(K8S, "switchboard.toml")]
    if os.path.exists(GENERATED_CONFIG):
        paths.append(GENERATED_CONFIG)
    os.makedirs(outdir, exist_ok=True)
    inline = os.path.join(outdir, "compose-switchboard.toml")
    with open(inline, "w") as f:
        f.write(compose_config_text())
    paths.append(inline)
    problems = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{rel(p)}: {e}")
            continue
        for key, value in data.items():
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                problems.append(f"{rel(p)}: {key!r} does not look like a long flag name")
            if isinstance(value, dict):
                problems.append(f"{rel(p)}: {key!r} is a table; settings are top-level keys")
    if problems:
        raise Problem("\n".join(problems))
    return "\n".join(paths)


def shutdown_grace(path):
    with open(path, "rb") as f:
        return seconds(tomllib.load(f).get("shutdown-grace", DEFAULT_SHUTDOWN_GRACE))


# ---- grace periods and addresses -----------------------------------------------------------


def graces():
    notes, problems = [], []

    # Compose: Docker's SIGKILL comes stop_grace_period after SIGTERM.
    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    grace = seconds(tomllib.loads(compose_config_text()).get("shutdown-grace", DEFAULT_SHUTDOWN_GRACE))
    gateways = {
        name: svc
        for name, svc in compose["services"].items()
        if "SWITCHBOARD_NODE_ID" in (svc.get("environment") or {})
    }
    if len(gateways) < 2:
        problems.append("compose.yaml: expected at least two gateway services")
    ids = set()
    for name, svc in gateways.items():
        env = svc["environment"]
        stop = seconds(svc.get("stop_grace_period", 10))
        if stop <= grace:
            problems.append(f"compose.yaml {name}: stop_grace_period {stop:g}s <= shutdown-grace {grace:g}s")
        if env.get("SWITCHBOARD_ADVERTISE_BACKEND") != f"http://{name}:7070":
            problems.append(f"compose.yaml {name}: advertises {env.get('SWITCHBOARD_ADVERTISE_BACKEND')!r}, not http://{name}:7070")
        if env["SWITCHBOARD_NODE_ID"] in ids:
            problems.append(f"compose.yaml {name}: node ID {env['SWITCHBOARD_NODE_ID']} used twice")
        ids.add(env["SWITCHBOARD_NODE_ID"])
    notes.append(f"compose {stop:g}s > {grace:g}s")

    # Kubernetes: the termination grace counts from the start of preStop.
    [deploy] = [d for d in load_yaml_docs(os.path.join(K8S, "deployment.yaml")) if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "gateway"]
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    pre = seconds(cmd[-1]) if cmd[0] == "sleep" else 0.0
    grace = shutdown_grace(os.path.join(K8S, "switchboard.toml"))
    term = float(pod["terminationGracePeriodSeconds"])
    if term <= pre + grace:
        problems.append(f"deployment.yaml: terminationGracePeriodSeconds {term:g} <= preStop {pre:g} + shutdown-grace {grace:g}")
    notes.append(f"kubernetes {term:g}s > {pre:g}s + {grace:g}s")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    for var, port in (("SWITCHBOARD_LISTEN", "client"), ("SWITCHBOARD_BACKEND_LISTEN", "grpc"), ("SWITCHBOARD_ADMIN_LISTEN", "admin")):
        if not (env.get(var) or "").endswith(f":{ports.get(port)}"):
            problems.append(f"deployment.yaml: {var}={env.get(var)} does not match containerPort {port}")
    if env.get("SWITCHBOARD_ADVERTISE_BACKEND") != f"http://$(POD_IP):{ports.get('grpc')}":
        problems.append("deployment.yaml: SWITCHBOARD_ADVERTISE_BACKEND is not http://$(POD_IP):<grpc port>")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            problems.append(f"deployment.yaml: {probe} is not {path} on the admin port")

    # systemd: SIGKILL comes TimeoutStopSec after SIGTERM.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    stop = seconds(unit["Service"]["TimeoutStopSec"])
    grace = shutdown_grace(GENERATED_CONFIG) if os.path.exists(GENERATED_CONFIG) else DEFAULT_SHUTDOWN_GRACE
    if stop <= grace:
        problems.append(f"switchboard-gateway.service: TimeoutStopSec {stop:g}s <= shutdown-grace {grace:g}s")
    if "/etc/switchboard/switchboard.toml" not in unit["Service"]["ExecStart"]:
        problems.append("switchboard-gateway.service: ExecStart does not read /etc/switchboard/switchboard.toml")
    notes.append(f"systemd {stop:g}s > {grace:g}s")

    if problems:
        raise Problem("\n".join(problems))
    return "; ".join(notes) + "; ports, probes and advertised addresses agree"


# ---- Dockerfile ----------------------------------------------------------------------------


def dockerfile():
    with open(DOCKERFILE) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    lines = [ln for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    problems = []
    stages = [m.group(1) for ln in lines if (m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", ln, re.I))]
    for stage in ("gateway", "file-notifier"):
        if stage not in stages:
            problems.append(f"no stage named {stage}")
    if stages and stages[-1] != "gateway":
        problems.append(f"the last stage (the default target) is {stages[-1]}, not gateway")
    for ln in lines:
        m = re.match(r"COPY\s+(.*)", ln, re.I)
        if not m or "--from=" in m.group(1):
            continue
        args = [a for a in m.group(1).split() if not a.startswith("--")]
        for src in args[:-1]:
            if src != "." and not glob.glob(os.path.join(ROOT, src)):
                problems.append(f"COPY source {src} does not exist in the build context")
    for ln in lines:
        if "cargo build" in ln and "--locked" not in ln:
            problems.append("a cargo build without --locked")
    exposed = {p for ln in lines if ln.upper().startswith("EXPOSE ") for p in ln.split()[1:]}
    if not {"8080", "7070", "9090"} <= exposed:
        problems.append(f"EXPOSE lists {sorted(exposed)}, not 8080 7070 9090")
    if not any(re.fullmatch(r"STOPSIGNAL\s+SIGTERM", ln.strip()) for ln in lines):
        problems.append("no STOPSIGNAL SIGTERM")
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    if not users or any(not re.fullmatch(r"[1-9]\d*(:\d+)?", u) for u in users):
        problems.append(f"USER must be a numeric non-root UID (runAsNonRoot checks it): {users}")
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    if not any(p.rstrip("/") in ("target", "/target") for p in ignored):
        problems.append(".dockerignore does not exclude target/")
    if problems:
        raise Problem("\n".join(problems))
    return f"stages {', '.join(stages)}; COPY sources exist; --locked; EXPOSE 8080 7070 9090; numeric USER; target/ ignored"


def main():
    commands = {
        "kustomization": kustomization,
        "manifests": manifests,
        "config-files": config_files,
        "graces": graces,
        "dockerfile": dockerfile,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(commands)}}} [ARGS]")
    try:
        print(commands[sys.argv[1]](*sys.argv[2:]))
    except (Problem, KeyError, ValueError, TypeError, OSError, yaml.YAMLError) as e:
        print(f"{type(e).__name__}: {e}" if not isinstance(e, Problem) else str(e), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
