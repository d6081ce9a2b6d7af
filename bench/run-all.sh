#!/usr/bin/env bash
# Run every benchmark, one after the other, and print their figures.
#
# Packages: those of each script (hyperfine time skopeo e2fsprogs).
#
#   bench/run-all.sh         TPLBUILD=path RUNS=3 BENCH_ENGINES=private|shared
#
# A benchmark that breaks is reported and the others still run; the exit
# code is 0 either way (figures, not a test).
set -uo pipefail
cd "$(dirname "$0")" || exit 1
for s in registry.sh build.sh plan-error.sh export.sh diff.sh disk.sh arm64.sh; do
  echo "################ bench/$s"
  bash "./$s" || echo "bench/$s stopped with exit code $?"
  echo
done
exit 0
