#!/usr/bin/env bash
# The wheels the GPU run carries (.whl/, ignored by git, named in the device call's `carry`), fetched here.
#
#   bash benchmarks/gpu_wheels.sh        # in the repository root; prints the folder's size and contents
#
# The GPU machine has Python 3.12 with torch 2.11, accelerate, transformers, safetensors, pyarrow, pandas,
# tqdm, numpy, scipy, pillow, pyyaml, einops, huggingface_hub and matplotlib, but not what is listed here
# (benchmarks/RESULTS.md, "Wheels"). Each is a cp312 manylinux or pure-Python wheel, one version each,
# installed there with --no-deps; the versions are the ones the test suite passes with. synthecho itself
# is built here as a wheel (--no-deps): gpu_run.sh checks that it matches the working tree it runs from.
# Not carried on purpose: torch (version-locked to the machine's CUDA), torchvision, SimpleITK, clean-fid
# (the benchmark's import path needs none of them), and docopt (num2words needs it only for its CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    diffusers==0.42.1          # the pipelines, UNets, ControlNet, schedulers
    datasets==5.2.0            # the corpus schema (synthecho.schema.corpus_features) that generate writes
    dill==0.4.1                # datasets' needs (the machine has the rest: pyarrow, fsspec, xxhash, ...)
    multiprocess==0.70.19
    monai==1.6.1               # the SPADE UNet (sdm-9k) and the filter's segmenter U-Net
    num2words==0.5.14          # the prompts' age words (synthecho.prompts)
    pydantic==2.13.4           # recipes (synthecho.recipe)
    pydantic_core==2.46.4
    annotated_types==0.7.0
    typing_inspection==0.4.2
    typing_extensions==4.16.0  # pydantic_core needs >= 4.14.1; the machine's may be older
)
# .gitignore has /.whl/ too; the local exclude keeps it out of the device tool's copy on older checkouts.
exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || true)
if [[ -n $exclude ]]; then mkdir -p "$(dirname "$exclude")"; grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"; fi
rm -rf .whl && mkdir -p .whl
for wheel in "${WHEELS[@]%% *}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$wheel"
done
# synthecho from a copy of the working tree (what travels to the machine), so no build/ lands in the tree.
tree=$(mktemp -d)
cp -r pyproject.toml README.md synthecho "$tree"/ && find "$tree" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl "$tree" && rm -rf "$tree"

# Every Requires-Dist of a carried wheel is carried or on the GPU machine. Not checked: synthecho's own
# (the toolkit's, not the benchmark's: gpu_run.sh's preflight imports what the benchmark needs), extras,
# importlib_metadata (diffusers imports it only on Python < 3.8) and docopt (num2words' CLI).
PRESENT="torch numpy scipy pillow pyyaml packaging huggingface-hub filelock requests regex safetensors
tqdm pyarrow pandas fsspec xxhash httpx aiohttp einops transformers accelerate jinja2 matplotlib typer
psutil zipp"
missing=0
for wheel in $(ls .whl/*.whl | grep -v /synthecho-); do
    while read -r need; do
        name=$(echo "$need" | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' | tr 'A-Z_.' 'a-z--')
        carried=$(ls .whl | sed -E 's/-[0-9].*//' | tr 'A-Z_.' 'a-z--' | grep -cx "$name" || true)
        if [[ $carried == 0 ]] && ! grep -qw -- "$name" <<<"$PRESENT" && [[ $name != docopt && $name != importlib-metadata ]]; then
            echo "MISSING: $(basename "$wheel") needs $need"; missing=1
        fi
    done < <(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
             | grep -v 'python_version < "3.1[0-1]"' || true)
done
du -sh .whl && ls -l .whl | awk 'NR > 1 {printf "%8.1f MiB  %s\n", $5 / 1048576, $9}'
exit $missing
