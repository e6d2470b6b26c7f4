#!/usr/bin/env bash
# A real full disk during saves (issue: saves that survive every I/O fault): mounts a 48 MiB tmpfs, runs the full-disk
# campaign of the fuzzer on it (N tries each of Save, SaveAsync and emagen convert, a filler taking every free byte the
# moment a save starts staging), unmounts. Needs root (mount). Usage: tests/Fuzz/full-disk.sh [N=20]
set -euo pipefail
cd "$(dirname "$0")/../.."
tries="${1:-20}"
mnt="$(mktemp -d)"
mount -t tmpfs -o size=48m tmpfs "$mnt"
trap 'umount "$mnt"; rmdir "$mnt"' EXIT
dotnet build tests/Fuzz -c Release -v q -nologo >/dev/null
dotnet tests/Fuzz/bin/Release/net10.0/linux-x64/EmaGen.Fuzz.dll --full-disk "$tries" --on "$mnt"
