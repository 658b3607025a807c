#!/usr/bin/env bash
# Installs Berth on this host (as root): the binaries, the systemd unit, an
# annotated /etc/berth/agent.toml (kept if present), man pages and shell
# completions. Then: `systemctl enable --now berthd`.
#
#   bash scripts/install.sh            # builds release binaries first
#
# Overridable (for packaging and tests): PREFIX (/usr/local), SYSCONFDIR (/etc),
# UNITDIR (/etc/systemd/system), COMPLETIONS_PREFIX (/usr/share), and BIN_SRC
# (a directory with already built binaries; skips the build).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
COMPLETIONS_PREFIX=${COMPLETIONS_PREFIX:-/usr/share}
if [ -z "${BIN_SRC:-}" ]; then
  cargo build --release --locked --bins
  BIN_SRC=target/release
fi
BINS=(berthd berth-monitor berthctl)
[ -x "$BIN_SRC/berth-dns" ] && BINS+=(berth-dns)

install -d "$PREFIX/bin" "$PREFIX/share/man/man1" "$PREFIX/share/man/man8" \
  "$SYSCONFDIR/berth" "$UNITDIR" \
  "$COMPLETIONS_PREFIX/bash-completion/completions" \
  "$COMPLETIONS_PREFIX/zsh/vendor-completions" \
  "$COMPLETIONS_PREFIX/fish/vendor_completions.d"
chmod 0700 "$SYSCONFDIR/berth"
for b in "${BINS[@]}"; do
  # berth-monitor must sit next to berthd: it holds every container.
  install -m 0755 "$BIN_SRC/$b" "$PREFIX/bin/$b"
done
sed "s|/usr/local/bin/berthd|$PREFIX/bin/berthd|; s|/etc/berth/agent.toml|$SYSCONFDIR/berth/agent.toml|" \
  deploy/berthd.service > "$UNITDIR/berthd.service"
chmod 0644 "$UNITDIR/berthd.service"
if [ ! -e "$SYSCONFDIR/berth/agent.toml" ]; then
  install -m 0600 deploy/agent.toml "$SYSCONFDIR/berth/agent.toml"
fi
"$PREFIX/bin/berthd" --man-page > "$PREFIX/share/man/man8/berthd.8"
"$PREFIX/bin/berthctl" man-pages "$PREFIX/share/man/man1" > /dev/null
"$PREFIX/bin/berthctl" completions bash > "$COMPLETIONS_PREFIX/bash-completion/completions/berthctl"
"$PREFIX/bin/berthctl" completions zsh > "$COMPLETIONS_PREFIX/zsh/vendor-completions/_berthctl"
"$PREFIX/bin/berthctl" completions fish > "$COMPLETIONS_PREFIX/fish/vendor_completions.d/berthctl.fish"
if [ "$UNITDIR" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed: ${BINS[*]} in $PREFIX/bin; unit $UNITDIR/berthd.service; config $SYSCONFDIR/berth/agent.toml"
echo "next: systemctl enable --now berthd   (then: berthctl status)"
