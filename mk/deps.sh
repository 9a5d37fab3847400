#!/bin/sh
# deps.sh -- install the Debian packages ddm needs, only those that are missing.
# Non-interactive; does nothing (and needs no network) when everything is there.
set -eu
# clang, libclang-rt-14-dev (libFuzzer and the sanitizer runtimes) and llvm
# (llvm-symbolizer, for readable sanitizer reports) are the fuzz build's (tests/fuzz/).
PKGS="build-essential pkg-config libuv1-dev libprotobuf-c-dev protobuf-c-compiler
libnanomsg-dev libopenblas-dev libcjson-dev libpng-dev node-llhttp libcmocka-dev libfreetype-dev
clang libclang-rt-14-dev llvm"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
