#!/bin/sh
# Make Fashion-MNIST available: Debian's package, else torchvision's downloader, else say how.
set -u
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
LOCAL_DIR=data/fashion-mnist
PYTHON=${PYTHON:-python3}

if [ -f "$DEBIAN_DIR/train-images-idx3-ubyte.gz" ] || [ -d "$LOCAL_DIR/FashionMNIST/raw" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's dataset-fashion-mnist ..."
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1
    [ -f "$DEBIAN_DIR/train-images-idx3-ubyte.gz" ] && exit 0
fi
echo "downloading Fashion-MNIST with torchvision into $LOCAL_DIR ..."
if "$PYTHON" -c "import torchvision; torchvision.datasets.FashionMNIST('$LOCAL_DIR', download=True)" >/dev/null 2>&1; then
    exit 0
fi
echo "error: Fashion-MNIST is not available: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or put the four *-ubyte.gz files in $LOCAL_DIR and pass --data-dir $LOCAL_DIR" >&2
exit 1
