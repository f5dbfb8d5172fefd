# shellcheck shell=bash
# Sourced by tests/distro/run and tests/mkosi/run: change a sealed file on an
# ext4 disk image offline, as an attacker holding the disk would. One byte is
# changed in place, so the file keeps its fs-verity flag and stored Merkle
# tree and only its data differs. FS is anything debugfs opens: an image file,
# or "DISK?offset=BYTES" for a partition inside a disk.

# The path of the EROFS image of DIGEST inside FS (composefs/images/<hex>
# may be a symlink).
sealed_image_path() { # FS DIGEST
  local path=/composefs/images/$2 target=
  if debugfs -R "stat $path" "$1" 2>/dev/null | grep -q 'Type: symlink'; then
    # A target over 59 bytes (../objects/XX/<62 hex> is 76) is a "slow"
    # symlink kept in a data block, which `cat` prints; a short one is in
    # the inode ("Fast link dest").
    target=$(debugfs -R "stat $path" "$1" 2>/dev/null | sed -n 's/^Fast link dest: "\(.*\)"$/\1/p')
    [ -n "$target" ] || target=$(debugfs -R "cat $path" "$1" 2>/dev/null | tr -d '\0')
    [ -n "$target" ] || return 1
    path=$(realpath -m "/composefs/images/$target")
  fi
  echo "$path"
}

# The byte offset, from the start of FS (4096-byte blocks), of byte OFFSET of
# the file PATH; fails when debugfs cannot map it.
fs_byte_offset() { # FS PATH OFFSET
  local phys
  phys=$(debugfs -R "bmap $2 $(( $3 / 4096 ))" "$1" 2>/dev/null | tail -n 1)
  [[ $phys =~ ^[0-9]+$ ]] && [ "$phys" -gt 0 ] || return 1
  echo $(( phys * 4096 + $3 % 4096 ))
}

# Flip the lowest bit of the byte at OFFSET of FILE (twice restores it).
flip_bit_at() { # FILE OFFSET
  local old
  old=$(dd if="$1" bs=1 skip="$2" count=1 status=none | od -An -tu1 | tr -d ' ')
  printf "\\$(printf %03o $(( (old ^ 1) & 255 )))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
