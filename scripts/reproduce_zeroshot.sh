#!/usr/bin/env bash
# Zero-shot retrieval of the pretrained ViT-B-32 (laion2b_s34b_b79k) on the Flickr30k 1k
# Karpathy test set, through `xretrieve eval`, beside open_clip's published figures.
#
# NEEDS NETWORK, and has NOT been run on the machine this project is developed on (it has
# none). It fetches what CLIP_benchmark fetches for `flickr30k`:
#   - the weights, through open_clip's normal loading (Hugging Face hub, ~600 MB, cached);
#   - the Flickr30k images from Kaggle (hsankesara/flickr-image-dataset; the `kaggle` CLI
#     with an API token in ~/.kaggle/kaggle.json), unless FLICKR_IMAGES points at a folder
#     that already holds the 31,783 JPEGs;
#   - flickr30k_test_karpathy.txt (1,000 images, 5,000 captions; "image,caption" rows) from
#     github.com/mehdidc/retrieval_annotations, the release CLIP_benchmark downloads.
# Everything goes under ZS_DIR (default runs/zeroshot). Exit status 0 when every figure is
# within ZS_TOLERANCE percentage points (default 1.0) of the published one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
XR=.venv/bin/xretrieve
PY=.venv/bin/python
ZS=${ZS_DIR:-runs/zeroshot}
ROOT="$ZS/flickr30k"
ANN_URL=https://github.com/mehdidc/retrieval_annotations/releases/download/1.0.0/flickr30k_test_karpathy.txt
mkdir -p "$ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/4 pretrained ViT-B-32 laion2b_s34b_b79k (open_clip fetches and caches it)"
$PY -c "import open_clip; open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')"

step "2/4 Flickr30k images"
if [[ -n "${FLICKR_IMAGES:-}" ]]; then
  # Images already on disk: link them in beside the annotation file.
  find "$FLICKR_IMAGES" -maxdepth 1 -name '*.jpg' -exec ln -sf {} "$ROOT"/ \;
elif ! compgen -G "$ROOT/*.jpg" >/dev/null; then
  command -v kaggle >/dev/null || {
    echo "needs the kaggle CLI (pip install kaggle) and ~/.kaggle/kaggle.json, or FLICKR_IMAGES=DIR" >&2
    exit 2
  }
  kaggle datasets download -d hsankesara/flickr-image-dataset -p "$ZS"
  unzip -q -o "$ZS/flickr-image-dataset.zip" -d "$ZS/unzipped"
  mv "$ZS"/unzipped/flickr30k_images/flickr30k_images/*.jpg "$ROOT"/
  rm -rf "$ZS/unzipped" "$ZS/flickr-image-dataset.zip"
fi

step "3/4 the Karpathy 1k test split (CLIP_benchmark's annotation file)"
[[ -s "$ROOT/flickr30k_test_karpathy.txt" ]] || curl -fL "$ANN_URL" -o "$ROOT/flickr30k_test_karpathy.txt"
head -3 "$ROOT/flickr30k_test_karpathy.txt"

step "4/4 xretrieve eval (text->image and image->text R@1/5/10)"
$XR eval ViT-B-32 --pretrained laion2b_s34b_b79k --data "$ROOT" --split test --json \
  | tee "$ZS/flickr30k_test.json"

# Published: open_clip's retrieval results table (docs/openclip_retrieval_results.csv, row
# ViT-B-32 laion2b_s34b_b79k): "Flickr image retr." is text->image, "text retr." image->text.
$PY - "$ZS/flickr30k_test.json" "${ZS_TOLERANCE:-1.0}" <<'EOF'
import json, sys

got = json.load(open(sys.argv[1]))
tolerance = float(sys.argv[2])
published = {
    "text_to_image": {"R@1": 66.78, "R@5": 88.38, "R@10": 93.10},
    "image_to_text": {"R@1": 84.10, "R@5": 96.20, "R@10": 98.30},
}
print(f"\n{got['n_images']} images, {got['n_captions']} captions (expected 1000 / 5000)")
print(f"{'direction':<15}{'k':>6}{'xretrieve':>11}{'published':>11}{'diff':>8}")
ok = got["n_images"] == 1000 and got["n_captions"] == 5000
for direction, figures in published.items():
    for k, want in figures.items():
        have = 100 * got[direction][k]
        ok &= abs(have - want) <= tolerance
        print(f"{direction:<15}{k:>6}{have:>11.1f}{want:>11.1f}{have - want:>+8.1f}")
print("reproduced" if ok else f"NOT reproduced (tolerance {tolerance} points)")
sys.exit(0 if ok else 1)
EOF
