#!/usr/bin/env bash
# The offline demo, end to end on a fresh clone: set up, generate a world, train a small
# CLIP on it, index its held-out images with the CLI, search, caption, and report R@K.
# Everything it writes goes under runs/demo (override with DEMO_DIR) and indexes/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
XR=.venv/bin/xretrieve
DEMO=${DEMO_DIR:-runs/demo}
INDEX=${DEMO_INDEX:-indexes/demo}
N=${DEMO_N:-10000}
rm -rf "$DEMO" && mkdir -p "$DEMO"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 generate a world of $N captioned scenes (train/test split)"
$XR make-world "$DEMO/world" --n "$N" --seed 0

# A step budget, not a time budget: every machine trains the same model and prints the same
# table, only slower or faster (the train line reports the time and steps per second).
step "2/5 train a small CLIP from scratch on the train split (${DEMO_STEPS:-1000} steps of 128)"
$XR train "$DEMO/world/train" "$DEMO/model" --max-steps "${DEMO_STEPS:-1000}"

step "3/5 index the held-out test split with the trained model"
$XR index "$DEMO/world/test" --index "$INDEX" --model "$DEMO/model" --full
$XR info "$INDEX"

step "4/5 search: text -> image, and image -> caption"
for q in "a large red circle in the top left" "a small blue square at the bottom right" \
         "a big green star in the upper right and a little yellow heart in the lower left"; do
  $XR search "$q" --index "$INDEX" -k 5
done
probes=("$DEMO"/world/test/*.png)
probe=${probes[0]}
echo "image -> caption for $probe (its own caption: $(head -1 "${probe%.png}.txt"))"
$XR caption "$probe" --index "$INDEX" -k 5

step "5/5 held-out retrieval quality (R@K, chance beside it)"
$XR eval "$DEMO/model" --world "$DEMO/world"
