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

"""What a real guest sees after its vPMEM was copied onto a larger one.

Runs on the host. A guest (``e2e.dax.guest``) creates a device-DAX namespace
on its NVDIMM, as a tenant would with ``ndctl``, and fills it. The NVDIMM's
backing file is then copied by the copy engine and the real helper onto a
larger, dirty backing file, exactly as the resize copies a host namespace
onto a larger one: here the backing files stand in for the hosts' device-DAX
namespaces (the helper's test allow-list names them). A second guest boots
on the larger NVDIMM and must find its namespace and read its data back.
"""

import json
import os
import random
import re
import shutil
import sys
import tempfile
import unittest

from nova.virt.libvirt import vpmem_copy

from e2e.dax import guest

MIB = 1024 * 1024
LABEL = guest.LABEL_MIB * MIB
SMALL_MIB, LARGE_MIB = 32, 64

# Runs in the guest (its /usr/bin/python3) on the first NVDIMM namespace.
_GUEST_SCRIPT = r'''
python3 - %(mode)s <<'PY'
import hashlib, json, mmap, os, random, subprocess, sys
out = subprocess.run(['ndctl', 'list', '-X'], capture_output=True).stdout
namespaces = json.loads(out or b'[]')
if isinstance(namespaces, dict):
    namespaces = [namespaces]
if not namespaces:
    print('GUEST-SAW {}')
    sys.exit(0)
ns = namespaces[0]
dev = '/dev/' + ns['daxregion']['devices'][0]['chardev']
size = int(ns['size'])
fd = os.open(dev, os.O_RDWR)
with mmap.mmap(fd, size) as m:
    if sys.argv[1] == 'write':
        m[:] = random.Random(7).randbytes(size)
    digest = hashlib.sha256(m).hexdigest()
os.close(fd)
print('GUEST-SAW ' + json.dumps({'name': ns.get('name'), 'uuid': ns['uuid'],
                                 'size': size, 'sha256': digest}))
PY
'''


class GuestResizeTestCase(unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(dir=guest.CACHE)
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.dirs = {}
        for name in ('small', 'large', 'large-old-way'):
            self.dirs[name] = os.path.join(self.tmp, name)
            os.mkdir(self.dirs[name])

    def boot(self, mode, where, mib, create):
        script = os.path.join(self.tmp, '%s.sh' % mode)
        with open(script, 'w') as f:
            f.write(_GUEST_SCRIPT % {'mode': mode})
        code, lines = guest.run(script, [('ns_small', mib)],
                                backing_dir=self.dirs[where], create=create)
        self.assertEqual(0, code)
        seen = [json.loads(line.split(' ', 1)[1]) for line in lines
                if line.startswith('GUEST-SAW ')]
        self.assertEqual(1, len(seen), lines[-20:])
        return seen[0]

    def copy(self, src, dst, label):
        """Copy a backing file onto a larger, dirty one."""
        src_size = (SMALL_MIB << 20) + LABEL
        dst_size = (LARGE_MIB << 20) + LABEL
        with open(dst, 'wb') as f:
            f.write(random.Random(5).randbytes(dst_size))
        listing = os.path.join(self.tmp, 'namespaces.json')
        with open(listing, 'w') as f:
            json.dump([{'path': src, 'size': src_size},
                       {'path': dst, 'size': dst_size}], f)
        os.chmod(listing, 0o600)
        env = ['env', 'NOVA_VPMEM_COPY_NAMESPACES=%s' % listing,
               'PYTHONPATH=%s' % os.environ.get('PYTHONPATH', '')]
        vpmem_copy.copy_namespaces(
            [vpmem_copy.NamespacePair(src, dst, src_size, dst_size, label)],
            helper=env + [sys.executable, '-m', 'nova.cmd.vpmem_copy'],
            root_helper=(), streams=2)

    def test_guest_finds_its_namespace_after_a_resize_copy(self):
        written = self.boot('write', 'small', SMALL_MIB, create=True)
        self.assertEqual('ns_small', written['name'])
        src = os.path.join(self.dirs['small'], 'ns_small')
        with open(src, 'rb') as f:
            # ndctl wrote the namespace labels into the last 2 MiB.
            f.seek(-LABEL, os.SEEK_END)
            self.assertTrue(re.search(b'NAMESPACE_INDEX', f.read()))

        self.copy(src, os.path.join(self.dirs['large'], 'ns_small'), LABEL)
        seen = self.boot('read', 'large', LARGE_MIB, create=False)
        self.assertEqual(written, seen)

        # The copy without the label area move, as before the fix: the
        # guest does not find its namespace any more.
        self.copy(src, os.path.join(self.dirs['large-old-way'], 'ns_small'),
                  0)
        lost = self.boot('read', 'large-old-way', LARGE_MIB, create=False)
        self.assertNotEqual(written.get('uuid'), lost.get('uuid'))
        self.assertNotEqual(written['sha256'], lost.get('sha256'))


if __name__ == '__main__':
    unittest.main(verbosity=2)
