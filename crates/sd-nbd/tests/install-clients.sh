#!/bin/sh
# Installs the real NBD clients the integration tests in this directory
# drive (tests skip, with a note, any that are missing):
#   qemu-utils  -> qemu-img, qemu-io, qemu-nbd
#   libnbd-bin  -> nbdinfo, nbdcopy
#   fio         -> fio with the nbd ioengine (built against libnbd)
set -eu
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update
$SUDO apt-get install -y qemu-utils libnbd-bin fio
