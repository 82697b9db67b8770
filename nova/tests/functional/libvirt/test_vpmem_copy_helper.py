# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""The nova-vpmem-copy helper beside other processes that use a namespace.

The helper's own logic is unit tested in nova.tests.unit.cmd; these tests
start real processes that hold, map or lock a namespace (a guest's QEMU,
another helper, nova's zeroing) and check that the helper keeps out of
their way or stops them, as it must.
"""

import io
import os
import signal
import subprocess
import sys
from unittest import mock

import fixtures
from oslo_utils.fixture import uuidsentinel as uuids

from nova.cmd import vpmem_copy as helper
from nova.tests.unit.cmd import test_vpmem_copy as helper_tests
from nova.virt import vpmem_stream as wire

DEST_NS = helper_tests.DEST_NS

# Map a file and close its descriptor, as a guest's QEMU may do; Python's
# mmap module would keep a duplicate descriptor open.
_MAP_AND_CLOSE = '''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
assert libc.mmap(None, 4096, 1, 1, fd, 0) not in (None, 2 ** 64 - 1)
os.close(fd)
print("mapped", flush=True)
time.sleep(60)
'''


# Lock dst as a helper does (argv: dst, ignore SIGTERM, 'helper', offset,
# length) or as nova's zeroing does (argv: dst, ignore SIGTERM, 'nova').
_LOCKER = '''
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[3] == 'helper':
    fcntl.lockf(fd, fcntl.LOCK_SH, 1, 1 << 62)
    fcntl.lockf(fd, fcntl.LOCK_EX, int(sys.argv[5]), int(sys.argv[4]))
else:
    fcntl.lockf(fd, fcntl.LOCK_EX)
if sys.argv[2] == 'True':
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
'''


class VPMEMCopyHelperProcessesTestCase(helper_tests.HelperTestBase):

    def _start(self, argv, ready=None, **kwargs):
        """Start a process that the test's cleanup kills.

        :param ready: the line the process prints once it holds the device
        """
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE if ready else None, **kwargs)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        if ready:
            self.addCleanup(proc.stdout.close)
            self.assertEqual(ready, proc.stdout.readline())
        return proc

    def _hold_open(self, path, argv=('sleep', '60')):
        """A process that keeps path open on its stdin."""
        with open(path, 'rb') as f:
            return self._start(list(argv), stdin=f)

    def test_device_in_use_is_refused(self):
        user = self._hold_open(self.dst)
        exc = self.assertRaises(wire.HelperError, helper.zero, DEST_NS)
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        self.assertIn('in use by process %d' % user.pid, str(exc))

    def _map_and_close(self, path):
        """A process that maps path and closes its descriptor, as QEMU may."""
        return self._start([sys.executable, '-c', _MAP_AND_CLOSE, path],
                           ready=b'mapped\n')

    def test_device_mapped_by_another_process_is_refused(self):
        # QEMU maps the namespace of a running guest; it need not keep a
        # file descriptor open.
        user = self._map_and_close(self.dst)
        fd_dir = '/proc/%d/fd' % user.pid
        self.assertNotIn(self.dst, [os.readlink(os.path.join(fd_dir, fd))
                                    for fd in os.listdir(fd_dir)])
        exc = self.assertRaises(wire.HelperError, helper.zero, DEST_NS)
        self.assertIn('in use by process %d' % user.pid, str(exc))

    def test_live_send_reads_a_device_in_use(self):
        # Only send, and only with live, may read a running guest's
        # namespace.
        user = self._map_and_close(self.src)
        exc = self.assertRaises(wire.HelperError, self._send)
        self.assertIn('in use by process %d' % user.pid, str(exc))
        self._receive(self._send(live=True))
        self.assertEqual(self.data, self._read(self.dst))
        args = helper._parser().parse_args(
            ['--instance', uuids.instance, 'receive', '--namespace', DEST_NS,
             '--length', '1'])
        self.assertFalse(hasattr(args, 'live'))

    def _locker(self, *args, ignore_term=False):
        """A process that locks dst: as a helper or as nova's zeroing.

        :param args: ('helper', offset, length) to mark dst and lock that
            range, as a receiver does; ('nova',) to lock all of dst, as
            nova's daxio zeroing does
        """
        return self._start([sys.executable, '-c', _LOCKER, self.dst,
                            str(ignore_term)] + [str(a) for a in args],
                           ready=b'ready\n')

    def _fake_helper(self, ignore_term=False):
        return self._locker('helper', 0, self.size, ignore_term=ignore_term)

    def test_zero_stops_a_helper_still_holding_the_device(self):
        # A receiver left behind by a stopped copy may still write, or hang.
        writer = self._fake_helper()
        helper.zero(DEST_NS, out=io.StringIO())
        self.assertEqual(-signal.SIGTERM, writer.wait(timeout=10))
        self.assertEqual(bytes(self.size), self._read(self.dst))
        stubborn = self._fake_helper(ignore_term=True)
        fd = os.open(self.dst, os.O_RDWR)
        self.addCleanup(os.close, fd)
        helper._stop_helpers(fd, 0, self.size, grace=0.3)
        self.assertEqual(-signal.SIGKILL, stubborn.wait(timeout=10))

    def test_zero_of_another_instances_namespace_stops_no_helper(self):
        # Its copy goes on: the records are checked before anything else.
        writer = self._fake_helper()
        self._give({DEST_NS: uuids.other}, {DEST_NS: uuids.other})
        before = self._read(self.dst)
        exc = self.assertRaises(wire.HelperError, helper.zero, DEST_NS,
                                out=io.StringIO())
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        self.assertIn('did not give namespace %s to instance %s' % (
            DEST_NS, uuids.instance), str(exc))
        self.assertIsNone(writer.poll())
        self.assertEqual(before, self._read(self.dst))

    def test_zero_leaves_helpers_of_other_ranges_alone(self):
        half = self.size // 2
        other = self._locker('helper', 0, half)
        helper.zero(DEST_NS, out=io.StringIO(), offset=half, length=half)
        self.assertIsNone(other.poll())
        self.assertEqual(bytes(half), self._read(self.dst)[half:])

    def test_zero_fails_when_a_helper_cannot_be_stopped(self):
        holder = self._fake_helper()
        fd = os.open(self.dst, os.O_RDWR)
        self.addCleanup(os.close, fd)
        with mock.patch.object(helper, '_signal') as mock_signal:
            exc = self.assertRaises(wire.HelperError,
                                    helper._stop_helpers, fd, 0, self.size,
                                    timeout=0.3)
        self.assertIn('still locked by nova-vpmem-copy processes [%d]' %
                      holder.pid, str(exc))
        mock_signal.assert_called_once_with(mock.ANY, signal.SIGTERM)
        self.assertIsNone(holder.poll())

    def test_nova_zeroing_the_device_keeps_helpers_out(self):
        nova = self._locker('nova')
        for call in (lambda: helper.zero(DEST_NS, out=io.StringIO()),
                     lambda: self._receive(self._send())):
            exc = self.assertRaises(wire.HelperError, call)
            self.assertEqual(wire.EXIT_DENIED, exc.code)
            self.assertIn('is locked: nova is zeroing it', str(exc))
        # Not a helper: zero never signals it.
        self.assertIsNone(nova.poll())

    def test_a_second_receiver_of_a_range_is_refused(self):
        half = self.size // 2
        self._locker('helper', 0, half)
        stream = self._send()
        msg = self._assert_fails(wire.EXIT_DENIED, stream)
        self.assertIn('bytes 0+%d of %s are locked by another '
                      'nova-vpmem-copy' % (self.size, DEST_NS), msg)
        # The other stream of the same copy receives the other half.
        self._receive(self._send(offset=half), offset=half)
        self.assertEqual(self.data[half:], self._read(self.dst)[half:])

    def test_a_process_named_like_a_helper_is_still_a_user(self):
        # A guest's kernel command line is in its QEMU's argv.
        self.useFixture(fixtures.MockPatchObject(helper, 'MARK_TRIES', 2))
        user = self._hold_open(
            self.dst, (sys.executable, '-c', 'import time; time.sleep(60)',
                       'nova-vpmem-copy', 'receive'))
        exc = self.assertRaises(wire.HelperError, helper.zero, DEST_NS)
        self.assertIn('in use by process %d' % user.pid, str(exc))
        self.assertIsNone(user.poll())

    def test_check_refuses_busy_namespaces(self):
        user = self._hold_open(self.dst)
        exc = self.assertRaises(wire.HelperError, helper.check,
                                [DEST_NS], [1])
        self.assertIn('in use', str(exc))
        user.kill()
        user.wait()
        self._fake_helper()
        exc = self.assertRaises(wire.HelperError, helper.check,
                                [DEST_NS], [1])
        self.assertIn('locked by another nova-vpmem-copy', str(exc))
