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
# Waits until server NAME (started as PID, printing to $work/NAME.out) has printed
# a line starting with KEY=, for at most SECONDS; then the caller reads its lines.
wait_ready() {
  local name=$1 pid=$2 key=$3 seconds=$4
  for _ in $(seq 1 $((seconds * 2))); do
    if grep -q "^$key=" "$work/$name.out"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  cat "$work/$name.err" >&2
  echo "test/run.sh: $name did not start within ${seconds}s" >&2
  exit 1
}
value_of() { sed -n "s/^$2=//p" "$work/$1.out"; }

wait_ready dockerd "$dockerd_pid" DOCKER_HOST 60
SLIPWAY_TEST_DOCKER_HOST=$(value_of dockerd DOCKER_HOST)
wait_ready radosgw "$radosgw_pid" S3_SECRET_KEY 60
SLIPWAY_TEST_S3_ENDPOINT=$(value_of radosgw S3_ENDPOINT)
SLIPWAY_TEST_S3_ACCESS_KEY=$(value_of radosgw S3_ACCESS_KEY)
SLIPWAY_TEST_S3_SECRET_KEY=$(value_of radosgw S3_SECRET_KEY)
wait_ready redis "$redis_pid" REDIS_URL 30
SLIPWAY_TEST_REDIS_URL=$(value_of redis REDIS_URL)
export SLIPWAY_TEST_DOCKER_HOST SLIPWAY_TEST_S3_ENDPOINT SLIPWAY_TEST_S3_ACCESS_KEY SLIPWAY_TEST_S3_SECRET_KEY SLIPWAY_TEST_REDIS_URL

node --test --enable-source-maps --test-concurrency=2 dist/test/*.test.js dist/test/unit/*.test.js
