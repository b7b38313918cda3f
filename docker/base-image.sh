#!/usr/bin/env bash
# Print the base image to build on, building a local one when no registry can provide it.
#
#   docker/base-image.sh DEFAULT_IMAGE [LOCAL_TAG]
#
# Order: DEFAULT_IMAGE if it is present or can be pulled; else LOCAL_TAG if present; else LOCAL_TAG
# built here: a minimal Debian rootfs (python3, python3-venv, ca-certificates, tini) made with
# debootstrap from the Debian mirror this machine's apt already uses, then `docker import`ed.
# Needs root and debootstrap (apt-get install debootstrap). DEBIAN_MIRROR overrides the mirror;
# DEBIAN_SUITE (default bookworm: its python3 is 3.11, the version of our wheels).
# Progress goes to stderr; stdout is the image reference only.
set -euo pipefail

default_image=${1:?usage: base-image.sh DEFAULT_IMAGE [LOCAL_TAG]}
local_tag=${2:-sidecar-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}
packages=python3,python3-venv,ca-certificates,tini,libjemalloc2

log() { echo "base-image: $*" >&2; }

present() { docker image inspect "$1" >/dev/null 2>&1; }

# The first URI that apt uses for "$suite" (main), from one-line or deb822 source files.
apt_mirror() {
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    local file
    for file in "${files[@]}"; do
        [[ -f $file ]] || continue
        case $file in
        *.sources)
            awk -v suite="$suite" '
                function flush() {
                    if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
                        split(uris, u, " "); print u[1]; found = 1; exit
                    }
                    types = suites = uris = ""
                }
                /^[[:space:]]*$/ { flush(); next }
                /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
                /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
                /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
                END { if (!found) flush() }
            ' "$file"
            ;;
        *)
            awk -v suite="$suite" '
                $1 == "deb" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }
            ' "$file"
            ;;
        esac
    done | head -n 1
}

if present "$default_image"; then
    echo "$default_image"; exit 0
fi
if present "$local_tag"; then
    log "using the local base $local_tag"
    echo "$local_tag"; exit 0
fi
if docker pull -q "$default_image" >/dev/null 2>&1; then
    echo "$default_image"; exit 0
fi

mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
if [[ -z $mirror ]]; then
    log "cannot pull $default_image and found no Debian mirror for '$suite' in /etc/apt; set DEBIAN_MIRROR or BASE_IMAGE"
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    log "cannot pull $default_image and debootstrap is missing: apt-get install debootstrap (or set BASE_IMAGE)"
    exit 1
fi
log "cannot pull $default_image: building $local_tag with debootstrap ($suite, $packages)"
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/sidecar-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
# A base image carries no package cache, docs or man pages.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/*
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$local_tag" >&2
echo "$local_tag"
