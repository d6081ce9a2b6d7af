#!/usr/bin/env bash
# The two ways tplbuild reads a step's changes, side by side (issue 11):
# the gateway example built cold with `--diff upper` (the overlay upper dir,
# local root engines only) and `--diff api` (`changes` + `export`, any
# engine) on a private local dockerd, and `--diff api` on the test bed's
# "remote" dockerd (tcp://127.0.0.1:2375, storage in its own mount
# namespace). Then, from one `--progress json` run of each, the bytes each
# step read from the engine against the step's uncompressed layer size.
#
# Goals: api ≤ 1.3× upper on the cold build; bytes read ≤ 2× the layer.
#
# Packages (installed if missing): time jq
#
#   bench/diff.sh            TPLBUILD=path RUNS=3
#
# Cold: an empty TPLBUILD_HOME and no tplbuild/state images in the engine
# (the template's own bottom-layer image is kept: it is the same for every
# mode, and the remote engine gets it from the same registry).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_need_packages time jq
bench_setup diff
bench_engines_up docker
bench_gateway_setup

REMOTE="${TPLBUILD_TEST_REMOTE_DOCKER_HOST:-tcp://127.0.0.1:2375}"
if ! "$DOCKER" -H "$REMOTE" version >/dev/null 2>&1; then
  bench_log "no remote dockerd at $REMOTE (scripts/testbed starts one); skipping its rows"
  REMOTE=""
fi

clean() {
  local host="$1" tags
  mapfile -t tags < <("$DOCKER" -H "$host" images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E '^tplbuild/state:' || true)
  [ ${#tags[@]} -eq 0 ] || "$DOCKER" -H "$host" rmi "${tags[@]}" >/dev/null 2>&1 || true
  rm -rf "$WORK/home"
}

# cmd MODE HOST [extra args]: the command line of one build, in CMD
# (measure runs it under /usr/bin/time, so it cannot be a function).
cmd() {
  local mode="$1" host="$2"; shift 2
  CMD=(env TPLBUILD_HOME="$WORK/home" DOCKER_HOST="$host"
    "${TPL[@]}" build -f "$BUILDFILE" --build-arg "BASE=$BASE" --engine docker
    --diff "$mode" "$@")
}

# cold LABEL MODE HOST: clean (not timed), then one timed cold build.
cold() {
  clean "$3"
  cmd "$2" "$3" --progress plain
  measure tplbuild "$1" "${CMD[@]}"
}

for _ in $(seq 1 "$RUNS"); do
  cold "cold, local, --diff upper" upper "$DOCKER_SOCK"
  cold "cold, local, --diff api" api "$DOCKER_SOCK"
  if [ -n "$REMOTE" ]; then
    cold "cold, remote tcp, --diff api" api "$REMOTE"
  fi
done

echo
print_machine
echo
print_table
echo
ratio "api / upper, cold gateway, local Docker" tplbuild "cold, local, --diff api" tplbuild "cold, local, --diff upper" "≤1.3"
echo

# Bytes per step, from one more run of each mode.
bytes_table() {
  local label="$1" mode="$2" host="$3" out="$WORK/logs/bytes-$2-${3//[^a-z0-9]/_}.json"
  clean "$host"
  cmd "$mode" "$host" --progress json
  "${CMD[@]}" >"$out" 2>&1 || { echo "$label: the run failed ($out)"; return 0; }
  echo "$label"
  jq -r 'select(.event == "step-diff") |
    "  step \(.step): read \(.read_bytes / 1048576 * 10 | floor / 10) MiB for a \(.layer_uncompressed_bytes / 1048576 * 10 | floor / 10) MiB layer (\(if .layer_uncompressed_bytes > 0 then (.read_bytes / .layer_uncompressed_bytes * 10 | floor / 10) else "-" end)×; goal ≤ 2×)"' "$out"
}
bytes_table "local, --diff upper (bytes of the files in the upper dir, apt caches included)" upper "$DOCKER_SOCK"
bytes_table "local, --diff api (bytes of the export stream)" api "$DOCKER_SOCK"
[ -z "$REMOTE" ] || bytes_table "remote tcp, --diff api" api "$REMOTE"
