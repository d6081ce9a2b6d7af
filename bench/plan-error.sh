#!/usr/bin/env bash
# How fast a Buildfile mistake is reported: `tplbuild plan` of a Buildfile
# whose INSTALL is misspelt (`INSTAL curl`). It must fail with exit code 2
# and file:line:col before touching a registry or an engine. Target: < 50 ms.
#
# Packages (installed if missing): hyperfine time
#
#   bench/plan-error.sh      TPLBUILD=path RUNS=3
#
# hyperfine runs the command many times (-i: the non-zero exit is the point)
# RUNS times over; the table shows the median of hyperfine's medians. Peak
# RSS comes from RUNS single runs under /usr/bin/time (whose clock has
# 10 ms steps, too coarse for the time).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_need_packages hyperfine time
bench_setup plan-error

mkdir -p "$WORK/typo"
cat > "$WORK/typo/Buildfile" <<'BUILDFILE'
ARG BASE=127.0.0.1:5000/platform/base:1
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
INSTAL curl
BUILDFILE
PLAN=("$TPLBUILD" --insecure-registry "$REG" plan -f "$WORK/typo/Buildfile")

rc=0
"${PLAN[@]}" >"$WORK/logs/plan.out" 2>&1 || rc=$?

for n in $(seq 1 "$RUNS"); do
  # -N: no shell in between, so the figure is tplbuild's alone.
  hyperfine -N -i --warmup 3 --min-runs 30 --style none \
    --export-json "$WORK/hyperfine-$n.json" "${PLAN[*]@Q}" >"$WORK/logs/hyperfine-$n.log" 2>&1
  jq -r --arg load "$(load1)" \
    '.results[0] | ["tplbuild", "plan, typo (hyperfine median)", (.median | tostring), "0", $load] | @tsv' \
    "$WORK/hyperfine-$n.json" >> "$RESULTS"
  # Exit code 2 is the expected outcome here, not a failed run.
  MEASURE_OK_RC="2" MEASURE_RSS_ONLY=1 measure tplbuild "plan, typo (1 run, for RSS)" "${PLAN[@]}"
done

echo
echo "## tplbuild plan of a Buildfile with a typo (RUNS=$RUNS)"
print_machine
echo "hyperfine: $(hyperfine --version)"
echo "exit code: $rc (expected 2); what it said:"
sed 's/^/    /' "$WORK/logs/plan.out" | head -8
echo
print_table
echo
awk -v m="$(median_of tplbuild "plan, typo (hyperfine median)")" 'BEGIN {
  printf "%-44s  %6.1f ms (target < 50 ms: %s)\n", "plan of a typo, median", m * 1000, (m < 0.05 ? "met" : "NOT met") }'
echo "(each hyperfine row: the median of ≥ 30 runs after 3 warm-ups; load1 = 1-minute load average when it started)"
