# shellcheck shell=bash
# Sourced by mkosi/enable-verity and tests/mkosi/run: find a partition of a
# GPT disk image by its type GUID.
GPT_TYPE_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_TYPE_ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709

# Prints "<number> <byte offset>" of the first partition of TYPE on DISK
# (numbered from 1, as the kernel names vda1, vda2, …); nothing if none.
gpt_partition() { # DISK TYPE
  sfdisk -J "$1" | python3 -c '
import json, sys
try:
    t = json.load(sys.stdin)["partitiontable"]
except (ValueError, KeyError):
    sys.exit(0)  # no partition table (sfdisk said why)
for i, p in enumerate(t["partitions"], 1):
    if p["type"].upper() == sys.argv[1]:
        print(i, p["start"] * t.get("sectorsize", 512))
        break
' "$2"
}
