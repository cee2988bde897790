#!/bin/sh
# Installs Loupe, or with `uninstall` removes it:
#   $PREFIX/lib/loupe/loupe                      the binary
#   $PREFIX/lib/loupe/libonnxruntime.so.1.31.1   its ONNX Runtime, beside it
#   $PREFIX/bin/loupe                            a link to the binary
#   $UNITDIR/loupe.service                       the systemd unit
# The binary finds the library next to itself through the link (the
# executable's path resolves links), so no variable or ld.so set-up is needed.
#
#   [PREFIX=/usr/local] [DESTDIR=] [UNITDIR=$PREFIX/lib/systemd/system] sh install.sh [install|uninstall]
#
# `make install` runs it with the checkout's files (LOUPE, ORT_LIB, UNIT);
# in a `make dist` tarball the files lie beside it. DESTDIR stages the
# files for a package: paths inside them (the link, ExecStart) omit it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-$PREFIX/bin}
LIBDIR=${LIBDIR:-$PREFIX/lib/loupe}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
LIBRARY=libonnxruntime.so.1.31.1
LOUPE=${LOUPE:-$here/loupe}
ORT_LIB=${ORT_LIB:-$here/$LIBRARY}
UNIT=${UNIT:-$here/loupe.service}

need() {
    if [ ! -f "$1" ]; then
        echo "install.sh: $1 is missing; $2" >&2
        exit 1
    fi
}

install_loupe() {
    need "$LOUPE" "build it first (\`make build\`), or pass LOUPE=PATH"
    need "$ORT_LIB" "run \`make setup\` first, or pass ORT_LIB=PATH"
    need "$UNIT" "pass UNIT=PATH (scripts/loupe.service in the checkout)"
    install -d "$DESTDIR$LIBDIR" "$DESTDIR$BINDIR" "$DESTDIR$UNITDIR"
    install -m 755 "$LOUPE" "$DESTDIR$LIBDIR/loupe"
    install -m 755 "$ORT_LIB" "$DESTDIR$LIBDIR/$LIBRARY"
    ln -sfn "$LIBDIR/loupe" "$DESTDIR$BINDIR/loupe"
    unit=$(mktemp)
    trap 'rm -f "$unit"' EXIT
    sed "s|^ExecStart=/usr/local/bin/loupe |ExecStart=$BINDIR/loupe |" "$UNIT" >"$unit"
    install -m 644 "$unit" "$DESTDIR$UNITDIR/loupe.service"
    echo "installed $DESTDIR$LIBDIR/loupe, $DESTDIR$LIBDIR/$LIBRARY, $DESTDIR$BINDIR/loupe -> $LIBDIR/loupe"
    echo "installed $DESTDIR$UNITDIR/loupe.service; start it with:"
    echo "  systemctl daemon-reload && systemctl enable --now loupe"
}

uninstall_loupe() {
    # A running service keeps its (deleted) binary: stop it first with
    # `systemctl disable --now loupe`.
    rm -f "$DESTDIR$BINDIR/loupe" "$DESTDIR$LIBDIR/loupe" "$DESTDIR$LIBDIR/$LIBRARY" \
        "$DESTDIR$UNITDIR/loupe.service"
    rmdir "$DESTDIR$LIBDIR" 2>/dev/null || true
    echo "removed Loupe from $DESTDIR$PREFIX; its data (/var/lib/loupe for the service) is left as it was"
}

case "${1:-install}" in
    install) install_loupe ;;
    uninstall) uninstall_loupe ;;
    *)
        echo "usage: [PREFIX=/usr/local] [DESTDIR=] sh install.sh [install|uninstall]" >&2
        exit 2
        ;;
esac
