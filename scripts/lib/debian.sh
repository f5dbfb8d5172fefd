# shellcheck shell=bash
# Sourced (not run) by scripts/setup, scripts/setup.d/20-kernel,
# tests/distro/mkroot and mkosi/build: where this machine's Debian packages
# come from, and which 6.12 kernel they all use. Mirror hosts are read from
# the machine's own apt configuration; none is written into the repository.

# The URI of the machine's first apt entry that is (SECURITY=1) or is not
# (SECURITY=0) the security archive, from debian.sources (deb822) or
# sources.list; nothing when there is none.
apt_entry_uri() {
  local security=$1 uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk -v s="$security" '/^URIs:/ && (/security/ ? 1 : 0) == s {print $2; exit}' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk -v s="$security" '$1=="deb" && (/security/ ? 1 : 0) == s {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list)
  fi
  echo "$uri"
}

# The main archive's URI.
debian_uri() {
  local uri
  uri=$(apt_entry_uri 0)
  if [ -z "$uri" ]; then
    echo "no Debian mirror URI in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list" >&2
    return 1
  fi
  echo "$uri"
}

# The security archive's URI: the machine's own entry, else the main mirror's
# debian-security path beside its debian one.
debian_security_uri() {
  local uri
  uri=$(apt_entry_uri 1)
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
