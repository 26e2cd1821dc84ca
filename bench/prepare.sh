#!/usr/bin/env bash
# hyperfine --prepare step, run in the fixture repository before every timed
# run: move both tools' state directories aside into $1 (a rename, so no
# deletion work spills into the timed run; the harness deletes $1 after the
# case), then flush the previous run's writes to disk.
set -eu
trash="$1"
mkdir -p "$trash"
for d in .gantry .gitlab-ci-local; do
    if [ -e "$d" ]; then
        mv "$d" "$(mktemp -d "$trash/XXXXXX")/"
    fi
done
sync
