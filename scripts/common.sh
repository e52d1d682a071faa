# Sourced by the project's scripts: the shared build directory and the Debian packages the
# tests and the quickstart use.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/svm-target}

# Install the ClamAV test files (clam.exe and its containers) when missing, or always with
# `--refresh` (CI: apt-get update first). Needs root; otherwise the tests that use them say so.
ensure_testfiles() {
  if [ "$(id -u)" = 0 ] && { [ "${1:-}" = --refresh ] || [ ! -d /usr/share/clamav-testfiles ]; }; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clamav-testfiles >/dev/null
  fi
}

# The packages the end-to-end tests drive: QEMU (TCG guests), cpio (their initramfs), curl and
# openssl (the admin API over TLS), clamd and clamdscan (the clamd-compatible listener). Needs root; otherwise the tests that need them
# fail or say they are skipped.
ensure_test_packages() {
  [ "$(id -u)" = 0 ] || return 0
  local missing=0
  for c in qemu-system-x86_64 cpio curl openssl clamd clamdscan; do
    command -v "$c" >/dev/null || missing=1
  done
  if [ "$missing" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 cpio curl openssl ca-certificates clamav-daemon >/dev/null
  fi
  # The clamd-compatible listener is tested with the Python `clamd` package, a real client.
  if ! python3 -c 'import clamd' 2>/dev/null; then
    python3 -m pip install -q clamd 2>/dev/null ||
      python3 -m pip install -q --break-system-packages clamd 2>/dev/null ||
      echo "warning: the Python clamd package could not be installed" >&2
  fi
}
