#!/bin/sh
# deps.sh -- install what ddm needs, only what is missing: Debian packages, then
# the project's Node tools (package-lock.json) into ./node_modules.
# Non-interactive; does nothing (and needs no network) when everything is there.
# chromium drives the playground's browser test, yq turns docs/openapi.yaml into
# JSON at build time, node/npm run the OpenAPI validator and puppeteer-core.
set -eu
cd "$(dirname "$0")/.."
# clang, libclang-rt-14-dev (libFuzzer and the sanitizer runtimes) and llvm
# (llvm-symbolizer, for readable sanitizer reports) are the fuzz build's (tests/fuzz/).
PKGS="build-essential pkg-config libuv1-dev libprotobuf-c-dev protobuf-c-compiler
libnanomsg-dev libopenblas-dev libcjson-dev libpng-dev node-llhttp libcmocka-dev libfreetype-dev
python3 python3-torch python3-numpy python3-protobuf protobuf-compiler libnanomsg5
yq chromium clang libclang-rt-14-dev llvm"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
# Node.js and npm: any install will do (the machine may bring its own); else Debian's
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "deps: installing:$missing" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# npm packages exactly as locked, when node_modules is missing or older than the lock
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "deps: npm ci (package-lock.json -> node_modules)" >&2
    npm ci --no-audit --no-fund --loglevel=error
fi
