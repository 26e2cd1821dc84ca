#!/usr/bin/env bash
# Saves the web UI's pictures used by README.md and docs/ui.md into docs/screenshots/: the tour
# test (crates/gantry/tests/it/ui_tour.rs) runs real pipelines of a Go service through a real
# server and agent and photographs the main pages in headless Chromium at 1280x720.
#   scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/need.sh chromium chromium
bash scripts/need.sh chromedriver chromium-driver
shots=$(mktemp -d)
trap 'rm -rf "$shots"' EXIT
GANTRY_UI_SCREENSHOTS="$shots" cargo nextest run -p gantry --test it ui_tour::
mkdir -p docs/screenshots
cp "$shots"/tour/*.png docs/screenshots/
ls docs/screenshots
