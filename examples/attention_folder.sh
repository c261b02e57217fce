#!/usr/bin/env bash
# Draw an attention heatmap over every image in a folder (recursively): NAME.png each.
#
#   examples/attention_folder.sh photos/ [--model DIR_OR_HUB_ID] [other `vithybrid attention-map` options]
#
# Writes into $OUTPUT_DIR (default: attention/).
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 FOLDER [vithybrid attention-map options...]" >&2
    exit 2
fi
folder=$1
shift
output_dir=${OUTPUT_DIR:-attention}
vithybrid attention-map "$folder" --output-dir "$output_dir" "$@"
echo "heatmaps in $output_dir/"
