#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Each host's vPMEM namespaces: regular files standing in for /dev/daxX.Y.

There is no PMEM hardware here, so every namespace is a sparse regular file
on a tmpfs that belongs to its host (``<base>/<host>/dev``, sized to hold
exactly the host's namespaces, so "filling the host's backing storage" is a
real ENOSPC). The file is bind-mounted on ``/dev/dax<region>.<n>``: Nova
builds device paths as ``/dev/<chardev>`` from ``ndctl list -X`` and the
copy helper insists that a device path is not a symlink, so a bind mount is
the only way to give Nova real-looking, host-specific paths. Host A uses
region 0 (/dev/dax0.N) and host B region 1 (/dev/dax1.N): a copy that uses
the source's table for the destination touches the wrong file and is caught.

For each host this module also writes what Nova and the copy helper ask
the host about its namespaces: the ``ndctl list -X`` JSON and the helper's
allow-list file (``NOVA_VPMEM_COPY_NAMESPACES``).
"""

import ctypes
import ctypes.util
import hashlib
import json
import os
import pathlib
import random
import subprocess

ALIGN = 2 * 1024 * 1024
MIB = 1024 * 1024
# label -> namespace names; the same names on both hosts because
# [libvirt]pmem_namespaces is process-wide, only the device paths differ.
# Four SMALL namespaces, so that four servers can leave one host at once.
LAYOUT = (('SMALL', 'ns_0'), ('SMALL', 'ns_1'), ('LARGE', 'ns_2'),
          ('SMALL', 'ns_3'), ('SMALL', 'ns_4'))
PMEM_NAMESPACES_OPTION = 'SMALL:ns_0|ns_1|ns_3|ns_4,LARGE:ns_2'


def punch_hole(fd, offset, length):
    """Free the pages of a range of a file; it reads back as zeroes."""
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                               ctypes.c_int64]
    keep_size_punch_hole = 0x01 | 0x02
    if libc.fallocate(fd, keep_size_punch_hole, offset, length):
        raise OSError(ctypes.get_errno(), 'fallocate(PUNCH_HOLE) failed')


class Namespace(object):
    def __init__(self, name, label, devpath, backing, size, chardev):
        self.name = name
        self.label = label
        self.devpath = devpath      # /dev/daxR.N, what Nova sees
        self.backing = backing      # the regular file on the host's tmpfs
        self.size = size
        self.chardev = chardev

    def ndctl(self, region):
        """This namespace as one entry of ``ndctl list -X``."""
        return {
            'dev': 'namespace%d.%s' % (region, self.chardev.split('.')[1]),
            'mode': 'devdax', 'map': 'dev', 'size': self.size,
            'uuid': '00000000-0000-4000-8000-%012d' % (
                region * 100 + int(self.chardev.split('.')[1])),
            'daxregion': {'id': region, 'size': self.size, 'align': ALIGN,
                          'devices': [{'chardev': self.chardev,
                                       'size': self.size}]},
            'name': self.name, 'numa_node': 0,
        }


class HostNamespaces(object):
    """The namespaces of one host and their backing storage."""

    def __init__(self, host_root, region, small_size):
        if small_size % ALIGN:
            raise ValueError('namespace size must be a multiple of 2 MiB')
        self.root = pathlib.Path(host_root)
        self.region = region
        self.dev_dir = self.root / 'dev'
        self.namespaces = []
        for index, (label, name) in enumerate(LAYOUT):
            size = small_size * (2 if label == 'LARGE' else 1)
            chardev = 'dax%d.%d' % (region, index)
            self.namespaces.append(Namespace(
                name, label, '/dev/' + chardev, self.dev_dir / chardev,
                size, chardev))
        self.ndctl_json = json.dumps(
            [ns.ndctl(region) for ns in self.namespaces])
        self.allow_list = self.root / 'namespaces.json'

    def by_devpath(self, devpath):
        for ns in self.namespaces:
            if ns.devpath == devpath:
                return ns
        raise KeyError('%s is not a namespace of region %d' % (
            devpath, self.region))

    def setup(self):
        total = sum(ns.size for ns in self.namespaces)
        self.dev_dir.mkdir(parents=True, exist_ok=True)
        # The host's storage: exactly its namespaces (+ room for the
        # filler's inode), so filling it makes writes to holes fail.
        subprocess.run(['mount', '-t', 'tmpfs', '-o',
                        'size=%d,mode=0700' % (total + MIB), 'nova-e2e',
                        str(self.dev_dir)], check=True)
        for ns in self.namespaces:
            with open(ns.backing, 'wb') as f:
                f.truncate(ns.size)     # sparse: a zeroed namespace
            if os.path.lexists(ns.devpath):
                raise RuntimeError(
                    '%s already exists: refusing to cover a real device' %
                    ns.devpath)
            pathlib.Path(ns.devpath).touch(mode=0o600)
            subprocess.run(['mount', '--bind', str(ns.backing), ns.devpath],
                           check=True)
        self.allow_list.write_text(json.dumps(
            [{'path': ns.devpath, 'size': ns.size, 'align': ALIGN}
             for ns in self.namespaces]))
        self.allow_list.chmod(0o644)

    def teardown(self):
        for ns in self.namespaces:
            if os.path.ismount(ns.devpath):
                subprocess.run(['umount', ns.devpath], check=False)
            if os.path.isfile(ns.devpath):      # our empty mount point
                os.unlink(ns.devpath)
        if os.path.ismount(self.dev_dir):
            subprocess.run(['umount', str(self.dev_dir)], check=False)
        if self.allow_list.exists():
            self.allow_list.unlink()

    def fill_storage(self):
        """Use up the host's free backing storage (a full device).

        Namespaces that read as all zero first give their pages back
        (content unchanged), so that writing into any of them fails with
        ENOSPC, or SIGBUS through a mapping.
        """
        for ns in self.namespaces:
            if is_zero(ns.backing, ns.size):
                with open(ns.backing, 'r+b') as f:
                    punch_hole(f.fileno(), 0, ns.size)
        filler = self.dev_dir / 'filler'
        with open(filler, 'ab') as f:
            try:
                while True:
                    f.write(b'\xff' * MIB)
                    f.flush()
            except OSError:
                pass
        return filler

    def free_storage(self):
        filler = self.dev_dir / 'filler'
        if filler.exists():
            filler.unlink()


def write_pattern(path, size, seed):
    """Fill a namespace with seeded random data with zero gaps.

    The namespace is written in 2 MiB blocks (the namespace alignment) and
    every fourth block is left zero, so a copy that skips zero extents
    still has to reproduce them. Returns the sha256 of the namespace.
    """
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, 'r+b') as f:
        for offset in range(0, size, ALIGN):
            length = min(ALIGN, size - offset)
            if (offset // ALIGN) % 4 == 3:
                chunk = bytes(length)
            else:
                chunk = rng.randbytes(length)
            f.write(chunk)
            digest.update(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def digest(path, size):
    """sha256 of the first ``size`` bytes of a namespace."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        remaining = size
        while remaining:
            chunk = f.read(min(MIB, remaining))
            if not chunk:
                raise IOError('%s is shorter than %d bytes' % (path, size))
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def zero_digest(size):
    h = hashlib.sha256()
    zero = bytes(MIB)
    for offset in range(0, size, MIB):
        h.update(zero[:min(MIB, size - offset)])
    return h.hexdigest()


def is_zero(path, size=None):
    size = size or os.path.getsize(path)
    with open(path, 'rb') as f:
        remaining = size
        while remaining:
            chunk = f.read(min(MIB, remaining))
            if chunk.count(0) != len(chunk):
                return False
            remaining -= len(chunk)
    return True


def dirty(path, size, seed):
    """Fill a namespace with random bytes (a namespace nobody zeroed)."""
    rng = random.Random(seed)
    with open(path, 'r+b') as f:
        for offset in range(0, size, MIB):
            f.write(rng.randbytes(min(MIB, size - offset)))


def is_zero_range(path, offset, length):
    """True when [offset, offset + length) of a namespace is all zero."""
    with open(path, 'rb') as f:
        f.seek(offset)
        remaining = length
        while remaining:
            chunk = f.read(min(MIB, remaining))
            if not chunk:
                return False
            if chunk.count(0) != len(chunk):
                return False
            remaining -= len(chunk)
    return True


# Nova gives the guest each namespace as an NVDIMM whose last 2 MiB are its
# label area (QEMU keeps the labels at the end of the backend).
LABEL_SIZE = 2 * MIB


def write_labels(path, size):
    """Fill a namespace's label area, as ndctl does in a guest.

    Returns the sha256 of the namespace.
    """
    with open(path, 'r+b') as f:
        f.seek(size - LABEL_SIZE)
        f.write(b'NAMESPACE_INDEX\0' * (LABEL_SIZE // 16))
        f.flush()
        os.fsync(f.fileno())
    return digest(path, size)


def guest_layout(old, path, size):
    """Check what a guest sees after a resize from ``old`` (bytes).

    Returns {check: bool}: the data area at the start, the label area at
    the end, and zero between.
    """
    with open(path, 'rb') as f:
        new = f.read(size)
    label = LABEL_SIZE
    return {
        'data area at the start': new[:len(old) - label] == old[:-label],
        'label area at the end': new[-label:] == old[-label:],
        'zero between': new[len(old) - label:-label].count(0) ==
        size - len(old)}
