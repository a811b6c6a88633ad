#!/usr/bin/env bash
# Provides the headless browser the status page's test loads the page in, idempotently.
#
#   scripts/chromium.sh        install Debian's chromium if missing; print its path on stdout
#
# With COURIER_CHROMIUM set, nothing is installed: the script checks that browser runs and prints it.
# Safe to run twice, as root on a bare machine (as .ci/run and `make test` do), and from a test.
set -euo pipefail

say() { echo "chromium: $*" >&2; }
die() { echo "chromium: error: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) to run: $*"; fi
}

find_browser() {
    if [ -n "${COURIER_CHROMIUM:-}" ]; then echo "$COURIER_CHROMIUM"; return; fi
    command -v chromium || command -v chromium-browser || true
}

browser="$(find_browser)"
if [ -z "$browser" ]; then
    say "installing Debian's chromium package"
    # Several tests may ask at once: one installs, the others wait for it.
    exec 9>/tmp/courier-chromium-install.lock
    flock 9
    browser="$(find_browser)"
    if [ -z "$browser" ]; then
        as_root apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >&2
        browser="$(find_browser)"
    fi
fi
[ -n "$browser" ] || die "chromium is still missing after installing it"
"$browser" --version >/dev/null 2>&1 || die "$browser does not run ($browser --version failed)"
echo "$browser"
