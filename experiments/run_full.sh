#!/usr/bin/env bash
# The full budget of one experiment, with every result under one folder.
#
#   experiments/run_full.sh <experiment> [options of experiments/<experiment>.py]
#   experiment: weighting_comparison | eps_scaling_sweep | debias_plus_es
#
# Results go to $RESULTS, else $OUT/full when $OUT is set (the GPU machine's folder that comes back),
# else experiments/results/full. When they go elsewhere, experiments/results/full (the slices run so
# far, copied back into the checkout) is copied there first: finished units are skipped and the report
# covers every slice. Copy the folder back over experiments/results/full afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment="${1:?usage: experiments/run_full.sh <weighting_comparison|eps_scaling_sweep|debias_plus_es> [options]}"
shift
results="${RESULTS:-${OUT:+$OUT/full}}"
results="${results:-experiments/results/full}"
if [ "$results" != "experiments/results/full" ] && [ -d experiments/results/full ]; then
    mkdir -p "$results"
    cp -r experiments/results/full/. "$results/"
fi
exec python "experiments/$experiment.py" --budget full --results "$results" "$@"
