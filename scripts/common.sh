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

# The packages the end-to-end tests drive: QEMU (TCG guests), cpio (their initramfs), and
# curl and openssl (the admin API over TLS). Needs root; otherwise the tests that need them
# fail or say they are skipped.
ensure_test_packages() {
  [ "$(id -u)" = 0 ] || return 0
  local missing=0
  for c in qemu-system-x86_64 cpio curl openssl; do command -v "$c" >/dev/null || missing=1; done
  if [ "$missing" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 cpio curl openssl ca-certificates >/dev/null
  fi
}
