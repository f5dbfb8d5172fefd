# shellcheck shell=bash
# Sourced (not run) by scripts/setup, scripts/setup.d/20-kernel,
# tests/distro/mkroot and mkosi/build: where this machine's Debian packages
# come from, and which 6.12 kernel they all use. Mirror hosts are read from
# the machine's own apt configuration; none is written into the repository.

# The main archive's URI, from debian.sources (deb822) or sources.list.
debian_uri() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  if [ -z "$uri" ]; then
    echo "no Debian mirror URI in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list" >&2
    return 1
  fi
  echo "$uri"
}

# The security archive's URI: the machine's own entry, else the main mirror's
# debian-security path beside its debian one.
debian_security_uri() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || uri=$(debian_uri | sed 's#/debian/*$#/debian-security#') || return 1
  echo "$uri"
}

# The newest 6.12 cloud kernel package built for bookworm ("+deb12" ABI
# names) that apt can fetch; SUFFIX is "" for the installable image package or
# "-unsigned" for the one whose vmlinuz is extracted for direct QEMU boots.
# bookworm's security suite carries newer 6.12 builds than bookworm-backports;
# the backports one (6.12.95) oopsed early under QEMU 7.2 TCG in 4 of 4 boots
# here, 6.12.117 in 1 of about 8. Prints nothing when apt knows none.
newest_bookworm_612_kernel() {
  local suffix=${1:-} names
  names=$(apt-cache search --names-only "^linux-image-6\\.12\\.[0-9]+\\+deb12-cloud-amd64${suffix}\$" | awk '{print $1}')
  [ -n "$names" ] || return 0
  # One apt-cache call; names with no candidate version are dropped.
  # shellcheck disable=SC2086
  apt-cache policy $names | awk '/^[^ ]/ {n=$1; sub(":$","",n)} /Candidate:/ && $2 != "(none)" {print n}' \
    | sort -V | tail -n 1
}
