#!/bin/sh
# data.sh -- `make data`: fetch the digits, fashion and emoji datasets into data/.
#
# All come from Debian packages that are downloaded, never installed:
#   opencv-doc            -> data/digits/digits.png   (2000x1000 grey, 100x50 tiles of 20x20)
#   dataset-fashion-mnist -> data/fashion/*-idx?-ubyte.gz (IDX, 60000 train + 10000 test)
#   fonts-noto-color-emoji + unicode-data
#                         -> data/png/emoji/<group>/<codepoint>.png (RGBA 136x128, one
#                            folder per Unicode emoji group), drawn by $EMOJI_RASTER
#                            (tools/data/emoji_raster.c; skipped when it is not set)
# When a package is installed, its files are copied instead of downloaded.
# Each dataset is checked (size, IDX headers and lengths) and skipped when it is
# already there and valid. Work happens in data/.fetch.* (removed on exit, .deb
# files included); files move into place only after they pass the checks.
# DDM_DATA_DIR overrides the target directory.
set -eu

DATA=${DDM_DATA_DIR:-data}
TMP=""

die() { echo "data: error: $*" >&2; exit 1; }
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# be32 FILE OFFSET: the big-endian uint32 at OFFSET of FILE (-1 past its end).
be32() {
    od -An -tu1 -j "$2" -N 4 "$1" |
        awk 'NF == 4 { print (($1 * 256 + $2) * 256 + $3) * 256 + $4; ok = 1 }
             END { if (!ok) print -1 }'
}

# check_digits FILE: silent and 0 when FILE is the 2000x1000 8-bit grey PNG,
# else prints why on stdout and returns 1.
check_digits() {
    f=$1
    [ -f "$f" ] || { echo "missing $f"; return 1; }
    sig=$(od -An -tx1 -N 8 "$f" | tr -d ' \n')
    [ "$sig" = 89504e470d0a1a0a ] || { echo "$f is not a PNG file"; return 1; }
    w=$(be32 "$f" 16); h=$(be32 "$f" 20)
    depth_type=$(od -An -tu1 -j 24 -N 2 "$f" | tr -s ' ' | sed 's/^ //')
    if [ "$w" != 2000 ] || [ "$h" != 1000 ]; then
        echo "$f is ${w}x${h}, expected 2000x1000"; return 1
    fi
    [ "$depth_type" = "8 0" ] ||
        { echo "$f is not 8-bit greyscale (bit depth, colour type: $depth_type)"; return 1; }
    return 0
}

# check_idx FILE MAGIC COUNT: FILE (gzip'd) is an IDX file with this magic
# (2049 labels, 2051 images of 28x28) holding COUNT items and exactly the bytes
# they need. Silent and 0 when valid, else prints why and returns 1.
check_idx() {
    f=$1; magic=$2; count=$3
    [ -f "$f" ] || { echo "missing $f"; return 1; }
    gzip -t "$f" 2>/dev/null || { echo "$f is not a valid gzip file (truncated?)"; return 1; }
    hdr=$(gzip -dc "$f" | od -An -tu1 -N 16 | tr -s ' \n' ' ')
    # shellcheck disable=SC2086
    set -- $hdr
    [ $# -ge 8 ] || { echo "$f: header too short"; return 1; }
    m=$(( (($1 * 256 + $2) * 256 + $3) * 256 + $4 ))
    n=$(( (($5 * 256 + $6) * 256 + $7) * 256 + $8 ))
    [ "$m" = "$magic" ] || { echo "$f: magic $m, expected $magic"; return 1; }
    [ "$n" = "$count" ] || { echo "$f: $n items, expected $count"; return 1; }
    want=$((8 + count))
    if [ "$magic" = 2051 ]; then
        [ $# -ge 16 ] || { echo "$f: header too short"; return 1; }
        rows=$(( ((${9} * 256 + ${10}) * 256 + ${11}) * 256 + ${12} ))
        cols=$(( ((${13} * 256 + ${14}) * 256 + ${15}) * 256 + ${16} ))
        if [ "$rows" != 28 ] || [ "$cols" != 28 ]; then
            echo "$f: images are ${rows}x${cols}, expected 28x28"; return 1
        fi
        want=$((16 + count * 784))
    fi
    len=$(gzip -dc "$f" | wc -c | tr -d ' ')
    [ "$len" = "$want" ] || { echo "$f: $len bytes, expected $want"; return 1; }
    return 0
}

FASHION_FILES="train-images-idx3-ubyte.gz:2051:60000 train-labels-idx1-ubyte.gz:2049:60000
t10k-images-idx3-ubyte.gz:2051:10000 t10k-labels-idx1-ubyte.gz:2049:10000"

# check_fashion DIR: all four IDX files in DIR are valid.
check_fashion() {
    for spec in $FASHION_FILES; do
        IFS=: read -r name magic count <<EOF
$spec
EOF
        check_idx "$1/$name" "$magic" "$count" || return 1
    done
    return 0
}

# download PKG: fetches PKG's .deb into $TMP (apt-get update once if that
# fails) and sets DEB to its path.
UPDATED=0
apt_download() {
    opts=""
    # as root, apt would drop to user _apt, who cannot write our temp dir
    [ "$(id -u)" -eq 0 ] && opts="-o APT::Sandbox::User=root"
    # shellcheck disable=SC2086
    (cd "$TMP" && apt-get download -q $opts "$1" >&2)
}
download() {
    if ! apt_download "$1"; then
        if [ "$UPDATED" = 0 ]; then
            echo "data: download of $1 failed; running apt-get update and retrying" >&2
            SUDO=""
            [ "$(id -u)" -ne 0 ] && SUDO="sudo"
            $SUDO apt-get update -qq >&2 || die "apt-get update failed (network? sources.list?)"
            UPDATED=1
        fi
        apt_download "$1" ||
            die "apt-get download $1 failed: check the network and that Debian's main archive is in sources.list"
    fi
    DEB=""
    for d in "$TMP"/"$1"_*.deb; do [ -f "$d" ] && DEB=$d; done
    [ -n "$DEB" ] || die "apt-get download $1 produced no .deb in $TMP"
}

# extract DEB PATTERN DEST: the members of DEB whose path matches the grep
# pattern PATTERN, flattened into directory DEST. Prints how many.
extract() {
    members=$(dpkg-deb -c "$1" | awk '{ print $NF }' | grep -E "$2" || true)
    [ -n "$members" ] || die "$(basename "$1") has no file matching $2 (package layout changed?)"
    mkdir -p "$TMP/x"
    # shellcheck disable=SC2086
    dpkg-deb --fsys-tarfile "$1" | tar -x -C "$TMP/x" $members ||
        die "could not extract $2 from $(basename "$1")"
    mkdir -p "$3"
    for m in $members; do mv "$TMP/x/$m" "$3/"; done
    rm -rf "$TMP/x"
}

start=$(date +%s)
mkdir -p "$DATA" || die "cannot create $DATA"
need=""
if why=$(check_digits "$DATA/digits/digits.png"); then
    echo "data: digits ok ($DATA/digits/digits.png)"
else
    [ -e "$DATA/digits/digits.png" ] && echo "data: digits invalid ($why), fetching again"
    need="$need digits"
fi
if why=$(check_fashion "$DATA/fashion"); then
    echo "data: fashion ok ($DATA/fashion)"
else
    [ -d "$DATA/fashion" ] && echo "data: fashion incomplete ($why), fetching again"
    need="$need fashion"
fi
# check_emoji DIR: DIR holds the rasterised emoji (at least 1000 PNGs).
check_emoji() {
    [ -d "$1" ] || { echo "missing $1"; return 1; }
    n=$(find "$1" -name '*.png' | wc -l | tr -d ' ')
    [ "$n" -ge 1000 ] || { echo "$1 holds $n PNGs, expected over 1000"; return 1; }
    return 0
}
if [ -z "${EMOJI_RASTER:-}" ]; then
    echo "data: emoji skipped (run through make data, which builds the rasteriser)"
elif why=$(check_emoji "$DATA/png/emoji"); then
    echo "data: emoji ok ($DATA/png/emoji)"
else
    [ -d "$DATA/png/emoji" ] && echo "data: emoji incomplete ($why), drawing again"
    need="$need emoji"
fi
[ -z "$need" ] && exit 0

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "apt-get and dpkg-deb are needed (a Debian system)"
fi
TMP=$(mktemp -d "$DATA/.fetch.XXXXXX") || die "cannot create a temp dir in $DATA"

for dset in $need; do
    case $dset in
    digits)
        sys=/usr/share/doc/opencv-doc/examples/data/digits.png
        if check_digits "$sys" >/dev/null; then   # package installed: no download
            mkdir -p "$TMP/digits" && cp "$sys" "$TMP/digits/"
            rm -rf "$DATA/digits" && mv "$TMP/digits" "$DATA/digits"
            echo "data: digits copied from the installed opencv-doc ($sys)"
            continue
        fi
        download opencv-doc
        extract "$DEB" '/examples/data/digits\.png$' "$TMP/digits"
        rm -f "$DEB"
        why=$(check_digits "$TMP/digits/digits.png") || die "extracted digits.png is bad: $why"
        rm -rf "$DATA/digits"
        mv "$TMP/digits" "$DATA/digits"
        echo "data: digits ready ($DATA/digits/digits.png, 2000x1000 grey, 5000 tiles)"
        ;;
    fashion)
        sys=/usr/share/datasets/fashion-mnist
        if check_fashion "$sys" >/dev/null; then   # package installed: no download
            mkdir -p "$TMP/fashion" && cp "$sys"/*-ubyte.gz "$TMP/fashion/"
            rm -rf "$DATA/fashion" && mv "$TMP/fashion" "$DATA/fashion"
            echo "data: fashion copied from the installed dataset-fashion-mnist ($sys)"
            continue
        fi
        download dataset-fashion-mnist
        extract "$DEB" '/fashion-mnist/[a-z0-9]+-(images-idx3|labels-idx1)-ubyte\.gz$' "$TMP/fashion"
        rm -f "$DEB"
        why=$(check_fashion "$TMP/fashion") || die "extracted fashion files are bad: $why"
        rm -rf "$DATA/fashion"
        mv "$TMP/fashion" "$DATA/fashion"
        echo "data: fashion ready ($DATA/fashion, 60000 train + 10000 test)"
        ;;
    emoji)
        download fonts-noto-color-emoji
        extract "$DEB" '/NotoColorEmoji\.ttf$' "$TMP/src"
        rm -f "$DEB"
        download unicode-data
        extract "$DEB" '/emoji/emoji-test\.txt$' "$TMP/src"
        rm -f "$DEB"
        "$EMOJI_RASTER" "$TMP/src/NotoColorEmoji.ttf" "$TMP/src/emoji-test.txt" "$TMP/emoji" ||
            die "drawing the emoji failed"
        why=$(check_emoji "$TMP/emoji") || die "drawn emoji are bad: $why"
        mkdir -p "$DATA/png"
        rm -rf "$DATA/png/emoji"
        mv "$TMP/emoji" "$DATA/png/emoji"
        echo "data: emoji ready ($DATA/png/emoji: RGBA 136x128, one folder per Unicode group)"
        ;;
    esac
done
echo "data: done in $(( $(date +%s) - start )) s"
