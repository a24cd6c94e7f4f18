#!/usr/bin/env bash
# The audio demo, end to end on a fresh clone: a world whose scenes also sound, an image/text
# model trained on it, an audio tower trained into that model against its frozen towers, the
# four audio retrieval directions on the held-out split, and a search by sound.
# Everything it writes goes under runs/audio-demo (override with DEMO_DIR) and indexes/audio-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
XR=.venv/bin/xretrieve
DEMO=${DEMO_DIR:-runs/audio-demo}
INDEX=${DEMO_INDEX:-indexes/audio-demo}
N=${DEMO_N:-20000}
rm -rf "$DEMO" && mkdir -p "$DEMO"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 generate a world of $N scenes with sound (NAME.wav beside NAME.png)"
$XR make-world "$DEMO/world" --n "$N" --seed 0 --audio

# Step budgets, not time budgets: every machine trains the same models and prints the same
# tables, only slower or faster (each train line reports the time and steps per second).
step "2/5 train the image/text model (${DEMO_STEPS:-1000} steps of 128)"
$XR train "$DEMO/world/train" "$DEMO/model" --max-steps "${DEMO_STEPS:-1000}"

step "3/5 train the audio tower into it against the frozen towers (${DEMO_AUDIO_STEPS:-1200} steps of 256)"
$XR train-audio "$DEMO/model" "$DEMO/world" --max-steps "${DEMO_AUDIO_STEPS:-1200}"

step "4/5 held-out retrieval quality, all directions (R@K, chance beside it)"
$XR eval "$DEMO/model" --world "$DEMO/world"

step "5/5 index the held-out sounds and images, then search by sound and for sound"
$XR index "$DEMO/world/test" --index "$INDEX" --model "$DEMO/model" --full --quiet
probes=("$DEMO"/world/test/*.wav)
probe=${probes[0]}
echo "audio -> image for $probe (its caption: $(head -1 "${probe%.wav}.txt"))"
$XR search --audio "$probe" --index "$INDEX" -k 5
$XR search "a large red circle in the top left" --modality audio --index "$INDEX" -k 5
