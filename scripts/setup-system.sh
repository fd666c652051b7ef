#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing.
# Idempotent; needs root (or sudo) on a fresh machine.
set -euo pipefail
pkgs=(pcscd vsmartcard-vpcd libpcsclite-dev swig build-essential pkg-config python3-venv
      softhsm2 chromium chromium-driver fonts-dejavu-core postgresql-15-auto-failover)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
