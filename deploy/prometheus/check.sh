#!/usr/bin/env bash
# Checks the alert rules with Prometheus's own tool: syntax (promtool check
# rules) and behaviour (promtool test rules alerts_test.yml: each alert fires
# when it should, after its `for:`, with its labels and text, and stays quiet
# otherwise). Skips with a message when promtool is missing (Debian package
# `prometheus`; .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
    echo "SKIP: promtool not installed (apt-get install prometheus); alert rules not checked"
    exit 0
fi
promtool check rules alerts.yml
promtool test rules alerts_test.yml
