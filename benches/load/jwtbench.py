#!/usr/bin/env python3
"""JWT benchmark: the load benchmark's gateway route with end-user tokens
required, beside the same route open, through mesh-proxy and Envoy. One
run, one machine: read the figures as ratios.

  python3 benches/load/jwtbench.py [--duration 10] [--connections 50]
      [--rounds 3] [--peers envoy|none]

mesh-proxy gets a RequestAuthentication (inline JWKS) and an
AuthorizationPolicy that requires a request principal, as an Istio user
writes them; Envoy gets its `jwt_authn` filter with the same keys, the
provider required on the route. Every request carries the same valid
token (RS256, then ES256: each its own row), so each request is checked
in full: its signature, times, issuer; the token is removed before the
backend (Istio's default, Envoy's `forward: false`). Any non-2xx answer
shows in the table.

Needs what loadbench.py needs, and the `openssl` command, which mints the
keys and signs the tokens.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import loadbench as lb  # noqa: E402

ISSUER = "https://bench.example"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True, timeout=60).stdout


def der_integers(der):
    """The two INTEGERs of an ECDSA signature's DER SEQUENCE."""
    def length(at):
        first = der[at]
        if first < 0x80:
            return first, at + 1
        count = first & 0x7F
        return int.from_bytes(der[at + 1:at + 1 + count], "big"), at + 1 + count

    _, at = length(1)
    values = []
    for _ in range(2):
        size, at = length(at + 1)
        values.append(int.from_bytes(der[at:at + size], "big"))
        at += size
    return values


class Key:
    """A signing key of `alg` (RS256 or ES256) in `work`: its JWK, and
    tokens it signs."""

    def __init__(self, work, alg):
        self.alg, self.kid = alg, alg.lower()
        self.path = os.path.join(work, f"{self.kid}.pem")
        if alg == "RS256":
            open(self.path, "wb").write(openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"))
            modulus = openssl("rsa", "-in", self.path, "-noout", "-modulus").decode().strip().split("=", 1)[1]
            self.jwk = {"kty": "RSA", "n": b64url(bytes.fromhex(modulus)), "e": "AQAB"}
        else:
            open(self.path, "wb").write(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
            point = openssl("pkey", "-in", self.path, "-pubout", "-outform", "DER")[-65:]
            self.jwk = {"kty": "EC", "crv": "P-256", "x": b64url(point[1:33]), "y": b64url(point[33:])}
        self.jwk.update({"kid": self.kid, "alg": alg, "use": "sig"})

    def token(self, claims):
        header = b64url(json.dumps({"alg": self.alg, "typ": "JWT", "kid": self.kid}).encode())
        signed = f"{header}.{b64url(json.dumps(claims).encode())}"
        signature = openssl("dgst", "-sha256", "-sign", self.path, data=signed.encode())
        if self.alg == "ES256":
            signature = b"".join(v.to_bytes(32, "big") for v in der_integers(signature))
        return f"{signed}.{b64url(signature)}"


def claims():
    """A token as an identity provider issues one: seven claims, a list
    and a nested one among them, valid for the whole run."""
    now = int(time.time())
    return {"iss": ISSUER, "sub": "alice", "aud": ["bench"], "iat": now, "exp": now + 24 * 3600,
            "groups": ["dev", "ops"], "org": {"team": "mesh"}}


def mesh_jwt_config(dirname, jwks):
    """What `jwks` adds to the gateway's mesh.yaml (lb.mesh_config)."""
    with open(os.path.join(dirname, "mesh.yaml"), "a") as f:
        f.write(f"""---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: istio-system}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
""")


def envoy_jwt_config(path, jwks):
    """`jwt_authn` put before the router of lb.envoy_config's bootstrap."""
    text = open(path).read()
    router = "          http_filters:\n"
    filt = f"""          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: {ISSUER}
                  local_jwks: {{inline_string: '{jwks}'}}
              rules: [{{match: {{prefix: "/"}}, requires: {{provider_name: bench}}}}]
"""
    assert router in text
    open(path, "w").write(text.replace(router, router + filt))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", default="envoy", help="envoy, or none")
    args = ap.parse_args()
    args.idle_connections = 0
    binary = lambda name: os.path.join(lb.TARGET, lb.PROFILE, name)  # noqa: E731
    for b in ("gateway", "demo-backend"):
        if not os.path.exists(binary(b)):
            sys.exit(f"{binary(b)} missing: {lb.BUILD}")
    work = tempfile.mkdtemp(prefix="jwtbench-")
    keys = [Key(work, alg) for alg in ("RS256", "ES256")]
    jwks = json.dumps({"keys": [k.jwk for k in keys]})
    backend_port = lb.free_port()
    backend = lb.start(["taskset", "-c", "0", binary("demo-backend"), "--host", "127.0.0.1", "--port", str(backend_port), "--version", "v1"], env=lb.ONE_WORKER)
    try:
        lb.wait_port(backend_port)
        jobs = plan(args, work, binary("gateway"), backend_port, jwks, keys)
        rows = {name: [] for name, _, _ in jobs}
        for n in range(args.rounds):
            for name, launch, headers in jobs if n % 2 == 0 else jobs[::-1]:
                rows[name].append(lb.measure(name, launch, "/hello", args, backend.pid, connections=False, headers=headers))
    finally:
        lb.stop(backend)
        shutil.rmtree(work, ignore_errors=True)
    report(args, rows)


def plan(args, work, gateway_bin, backend_port, jwks, keys):
    """(name, launch, headers) of every row: each proxy open, then with
    tokens required and a token of each key."""
    bearer = {k.alg: [("authorization", f"Bearer {k.token(claims())}")] for k in keys}
    jobs = []
    for jwt in (False, True):
        d = tempfile.mkdtemp(dir=work)
        port = lb.free_port()
        lb.mesh_config(d, port, backend_port, lb.SMALL)
        if jwt:
            mesh_jwt_config(d, jwks)
        launch = lb.launcher(lb.gateway_cmd(gateway_bin, d), port, env=dict(lb.ONE_WORKER, RUST_LOG="error"))
        jobs += [(f"mesh-proxy JWT {alg}", launch, h) for alg, h in bearer.items()] if jwt else [("mesh-proxy", launch, ())]
        if "envoy" in args.peers:
            port = lb.free_port()
            cfg = os.path.join(work, f"envoy-{jwt}.yaml")
            lb.envoy_config(cfg, port, backend_port, lb.SMALL)
            if jwt:
                envoy_jwt_config(cfg, jwks)
            cmd = [lb.envoy_binary(), "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
            launch = lb.launcher(cmd, port)
            jobs += [(f"envoy JWT {alg}", launch, h) for alg, h in bearer.items()] if jwt else [("envoy", launch, ())]
    return jobs


def report(args, per_round):
    rows = {name: lb.median_row(rounds) for name, rounds in per_round.items()}
    print(f"\n{args.connections} connections, {args.duration}s each, median of {args.rounds} rounds")
    print(f"{'':22}{'req/s':>10}{'/ open':>8}{'p50 ms':>9}{'p99 ms':>9}{'cpu µs/req':>11}{'h2 req/s':>10}{'/ open':>8}{'non-2xx':>8}")
    for name, r in rows.items():
        open_row = rows[name.split(" JWT")[0]]
        print(f"{name:22}{r['rps']:>10.0f}{r['rps'] / open_row['rps']:>8.2f}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['cpu_per_1k'] * 1000:>11.2f}"
              f"{r['h2_rps']:>10.0f}{r['h2_rps'] / max(open_row['h2_rps'], 1):>8.2f}{r['errors']:>8}")
    if "envoy JWT RS256" in rows:
        print("\nmesh-proxy / envoy, req/s: " + ", ".join(
            f"{label} {rows['mesh-proxy' + label]['rps'] / rows['envoy' + label]['rps']:.2f}"
            for label in ("", " JWT RS256", " JWT ES256")))
    print("\nreq/s by round: " + "; ".join(f"{name} " + " ".join(f"{r['rps']:.0f}" for r in rounds) for name, rounds in per_round.items()))


if __name__ == "__main__":
    main()
