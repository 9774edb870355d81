#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian 12 machine, then runs every test.
# Heavy servers (dockerd) start once here and are shared by the test files.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real.
packages=(docker.io docker-registry redis-server skopeo podman buildah busybox-static runc attr iptables iproute2 wrk curl git ceph-mon ceph-osd radosgw ceph-common)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test/run.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npx tsc -p .

work=$(mktemp -d /tmp/slipway-run.XXXXXX)
dockerd_pid=
radosgw_pid=
redis_pid=
cleanup() {
  if [ -n "$dockerd_pid" ]; then
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  if [ -n "$radosgw_pid" ]; then
    kill -TERM "$radosgw_pid" 2>/dev/null || true
    wait "$radosgw_pid" 2>/dev/null || true
  fi
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# One radosgw (Ceph's S3 server) for the whole run; tests isolate themselves by random buckets.
node dist/test/harness/radosgw.js serve >"$work/radosgw.out" 2>"$work/radosgw.err" &
radosgw_pid=$!

# One redis-server for the whole run; tests isolate themselves by random queue prefixes.
node dist/test/harness/redis.js serve >"$work/redis.out" 2>"$work/redis.err" &
redis_pid=$!

# One dockerd for the whole run; tests isolate themselves by random repository names.
node dist/test/harness/dockerd.js serve >"$work/dockerd.out" 2>"$work/dockerd.err" &
dockerd_pid=$!
for _ in $(seq 1 120); do
  if grep -q '^DOCKER_HOST=' "$work/dockerd.out"; then break; fi
  if ! kill -0 "$dockerd_pid" 2>/dev/null; then cat "$work/dockerd.err" >&2; echo "test/run.sh: dockerd did not start" >&2; exit 1; fi
  sleep 0.5
done
SLIPWAY_TEST_DOCKER_HOST=$(sed -n 's/^DOCKER_HOST=//p' "$work/dockerd.out")
[ -n "$SLIPWAY_TEST_DOCKER_HOST" ] || { cat "$work/dockerd.err" >&2; echo "test/run.sh: dockerd did not start in 60s" >&2; exit 1; }
export SLIPWAY_TEST_DOCKER_HOST

for _ in $(seq 1 120); do
  if grep -q '^S3_SECRET_KEY=' "$work/radosgw.out"; then break; fi
  if ! kill -0 "$radosgw_pid" 2>/dev/null; then cat "$work/radosgw.err" >&2; echo "test/run.sh: radosgw did not start" >&2; exit 1; fi
  sleep 0.5
done
SLIPWAY_TEST_S3_ENDPOINT=$(sed -n 's/^S3_ENDPOINT=//p' "$work/radosgw.out")
SLIPWAY_TEST_S3_ACCESS_KEY=$(sed -n 's/^S3_ACCESS_KEY=//p' "$work/radosgw.out")
SLIPWAY_TEST_S3_SECRET_KEY=$(sed -n 's/^S3_SECRET_KEY=//p' "$work/radosgw.out")
[ -n "$SLIPWAY_TEST_S3_SECRET_KEY" ] || { cat "$work/radosgw.err" >&2; echo "test/run.sh: radosgw did not start in 60s" >&2; exit 1; }
export SLIPWAY_TEST_S3_ENDPOINT SLIPWAY_TEST_S3_ACCESS_KEY SLIPWAY_TEST_S3_SECRET_KEY

for _ in $(seq 1 60); do
  if grep -q '^REDIS_URL=' "$work/redis.out"; then break; fi
  if ! kill -0 "$redis_pid" 2>/dev/null; then cat "$work/redis.err" >&2; echo "test/run.sh: redis-server did not start" >&2; exit 1; fi
  sleep 0.5
done
SLIPWAY_TEST_REDIS_URL=$(sed -n 's/^REDIS_URL=//p' "$work/redis.out")
[ -n "$SLIPWAY_TEST_REDIS_URL" ] || { cat "$work/redis.err" >&2; echo "test/run.sh: redis-server did not start in 30s" >&2; exit 1; }
export SLIPWAY_TEST_REDIS_URL

node --test --enable-source-maps --test-concurrency=2 dist/test/*.test.js dist/test/unit/*.test.js
