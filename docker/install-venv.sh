#!/bin/sh
# Build stage of every image: a virtual environment at /opt/semlink with semlink's serving
# dependencies (ONNX Runtime, no torch). `deps` installs the dependencies pyproject.toml names (a
# layer that survives code and README edits: the Dockerfiles copy those after it), `semlink` the
# package itself from /src.
set -eu
cd /src
if ls /tmp/extra-ca/*.crt >/dev/null 2>&1; then
    cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca/*.crt >/tmp/ca.pem
    export PIP_CERT=/tmp/ca.pem
fi
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120
case "$1" in
deps)
    python3 -m venv /opt/semlink
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt
    /opt/semlink/bin/pip install --quiet -r /tmp/requirements.txt
    ;;
semlink)
    # pyproject.toml maps zoo/ into the package; the images carry the zoo in /models instead
    mkdir -p /src/zoo
    /opt/semlink/bin/pip install --quiet --no-deps /src
    /opt/semlink/bin/pip uninstall --quiet --yes pip
    find /opt/semlink -name __pycache__ -prune -exec rm -rf {} +
    ;;
*)
    echo "usage: install-venv.sh deps|semlink" >&2
    exit 2
    ;;
esac
