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

# The packages the end-to-end tests drive: QEMU (TCG guests) and cpio (their initramfs).
# Needs root; otherwise the guest test says it is skipped.
ensure_test_packages() {
  [ "$(id -u)" = 0 ] || return 0
  if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cpio >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 cpio >/dev/null
  fi
}
