#!/usr/bin/env bash
# Saves the web UI's pictures used by README.md and docs/ui.md into docs/screenshots/: the tour
# test (crates/gantry/tests/it/ui_tour.rs) runs real pipelines of a Go service through a real
# server and agent and photographs the main pages in headless Chromium at 1280x720.
#   scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/need.sh chromium chromium
bash scripts/need.sh chromedriver chromium-driver
GANTRY_UI_SCREENSHOTS="$PWD/docs/screenshots" exec cargo nextest run -p gantry --test it ui_tour::
