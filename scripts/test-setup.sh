#!/usr/bin/env bash
# What `make test` needs beyond the Python packages, installed when missing:
#   - Debian packages: chromium (a test renders report.html headless) and dataset-fashion-mnist (the real
#     Fashion-MNIST files the loader tests read from /usr/share/datasets);
#   - MNIST and CIFAR-10 in their canonical formats: read from ../shared/data where it exists, otherwise
#     fetched once by funclens's own download (md5-checked) into its data cache.
# Usage: scripts/test-setup.sh PYTHON
set -euo pipefail
py=${1:?usage: scripts/test-setup.sh PYTHON}
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium-browser ] || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make test: installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "make test needs the Debian packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

shared=${FUNCLENS_SHARED_DATA:-../shared/data}
if [ ! -d "$shared/mnist" ] || [ ! -d "$shared/cifar-10-batches-py" ]; then
  echo "make test: $shared lacks MNIST or CIFAR-10; fetching them into funclens's data cache (checksummed)"
  "$py" - <<'PY'
from funclens.data import default_data_dir, load_dataset

for name in ("mnist", "cifar10"):
    load_dataset(name)  # downloads only what is missing, checking the published md5 of every file
print(f"make test: MNIST and CIFAR-10 are in {default_data_dir()}")
PY
fi
