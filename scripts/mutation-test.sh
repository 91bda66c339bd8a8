#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the engine -- rule table to TSV: reading, parameters, evaluation,
# text, classification, TSV, the foreign-results check -- and of the plugin's bookkeeping
# (ReasonBook: merges, splits, foreign results, origins).  Not part of `make test` (tens of
# minutes).  mutmut's configuration, and the fast test subset it runs, are in setup.cfg [mutmut].
#
#   .venv/bin/python -m pip install mutmut      # once
#   scripts/mutation-test.sh                    # MAX_CHILDREN=2 by default (a shared machine)
#   .venv/bin/mutmut results                    # the survivors; `mutmut show NAME` shows one
#
# Extra arguments replace the selection, e.g. scripts/mutation-test.sh "phy_bc_reason_plugin.x_evaluate*"
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=(
  # reading bombcell's results and the dataset's files
  criterion_name dataset_path find_bombcell_dir _one_line _read_columns _read_csv_columns
  _csv_values _read_params _read_metrics _truth _empty_cell_message linear_spatial_decay
  enabled_flags threshold_value _spike_width_scale complete_params newer_bombcell_names
  newer_version_note read_cluster_tsv read_saved_labels phy_cluster_ids spike_counts
  _has_duplicates_record
  # evaluation
  rule_enabled evaluate _non_somatic _unit_codes label_names decisive_mask
  # text
  format_number _as_float _order comparison_numbers criterion_text short_criterion_text
  comparison_text
  # classification
  _json_number ordered_criteria format_explanation _fmt_json classify_dataset
  # the TSV and the foreign-results check
  _tsv_safe write_reason_tsv recorded_origins foreign_results_message foreign_results_problem
  dataset_reasons export label_counts
  # the plugin's bookkeeping (with ReasonBook below)
  _parents_text merged_reason split_reason
)
selection=()
for f in "${FUNCTIONS[@]}"; do selection+=("phy_bc_reason_plugin.x_${f}*"); done
for c in _EmptyCell Classification ReasonBook; do selection+=("phy_bc_reason_plugin.xǁ${c}ǁ*"); done
if [ $# -gt 0 ]; then selection=("$@"); fi

exec env QT_QPA_PLATFORM=offscreen "${MUTMUT:-.venv/bin/mutmut}" run \
  --max-children "${MAX_CHILDREN:-2}" "${selection[@]}"
