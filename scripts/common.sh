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
