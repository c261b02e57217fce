#!/usr/bin/env bash
# Label every image in a folder (recursively) into a CSV: path, best label, score, ...
#
#   examples/label_folder.sh photos/ [--model DIR_OR_HUB_ID] [other `vithybrid classify` options]
#
# Writes $OUTPUT (default: labels.csv). Files that fail are listed on stderr and get a row with
# the error column filled; the exit status is then 1.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 FOLDER [vithybrid classify options...]" >&2
    exit 2
fi
folder=$1
shift
output=${OUTPUT:-labels.csv}
status=0
vithybrid classify "$folder" --top-k 3 --output "$output" "$@" || status=$?
[[ -s $output ]] && head -n 5 "$output"
exit "$status"
