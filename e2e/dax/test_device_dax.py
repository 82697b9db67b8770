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

"""The vPMEM copy helper on real device-DAX namespaces.

These tests run as root INSIDE the QEMU guest of ``e2e.dax.guest`` (see
``tools/run-dax-tests``), where the emulated NVDIMMs are real
``/dev/daxN.M`` character devices, listed by the real ``ndctl list -X`` and
named in the guest's ``/etc/nova/nova.conf``: the helper's own allow-list,
as on a real host. Each test writes the host's owners file where
nova-compute keeps it (``[DEFAULT] state_path`` and ``host`` of that
nova.conf), with nova-compute's own code: the source namespace ``ns_small``
is the test instance's, and ``ns_large`` was given to it for its move here.
The helper acts for that instance only, on namespace names.
"""

import collections
import configparser
import contextlib
import json
import mmap
import os
import pwd
import random
import re
import subprocess
import sys
import tempfile
import time
import unittest

from nova.cmd import vpmem_copy as helper
from nova import exception
from nova.virt.libvirt import vpmem_copy
from nova.virt.libvirt import vpmem_owners
from nova.virt import vpmem_stream as wire

MIB = 1024 * 1024
LABEL = 2 * MIB
# As nova-compute runs it: by its own Python, isolated.
HELPER = [sys.executable, '-I', '-m', 'nova.cmd.vpmem_copy']
NOVA_CONF = '/etc/nova/nova.conf'
# The instance every copy of these tests acts for, and another one.
INSTANCE = 'a6c3e2b4-6d0f-4b8e-9c51-3f7d2e8a1b90'
OTHER = '0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f'
Namespace = collections.namedtuple('Namespace', 'name path size align')


def ndctl_namespaces():
    """{name: Namespace} from the real ndctl."""
    out = subprocess.run(['ndctl', 'list', '-X'], check=True,
                         capture_output=True).stdout
    result = {}
    for ns in json.loads(out):
        dev = ns['daxregion']['devices'][0]
        result[ns['name']] = Namespace(ns['name'], '/dev/' + dev['chardev'],
                                       int(ns['size']), int(dev['align']))
    return result


def write_owners(owners, incoming=()):
    """Write this host's owners file as nova-compute does.

    :param owners: {namespace name: instance UUID}, the whole record
    :param incoming: the names given to their instance for its move here
    """
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(NOVA_CONF)
    record = vpmem_owners.NamespaceOwners(conf.get('DEFAULT', 'state_path'),
                                          conf.get('DEFAULT', 'host'))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record.path)
    for name, owner in owners.items():
        record.set([name], owner, incoming=name in incoming)
    # The helper reads the record once per run: the calls of its functions
    # in this process after a new record are a new run.
    helper._run.clear()
    return record.path


@contextlib.contextmanager
def mapped(path, size):
    """The whole device, mapped shared; unmapped again on exit.

    The helper refuses a device that another process maps, so no test keeps
    a mapping while it runs the helper.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, size, mmap.MAP_SHARED) as m:
            yield m
    finally:
        os.close(fd)


class DaxTestBase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.namespaces = ndctl_namespaces()
        cls.small = cls.namespaces['ns_small']
        cls.large = cls.namespaces['ns_large']
        # The helper's functions called in this process act for INSTANCE,
        # as main() sets it from --instance.
        helper._config.update(instance=INSTANCE)
        helper._run.clear()

    def setUp(self):
        super().setUp()
        self.rng = random.Random(self.id())
        self.tmp = tempfile.mkdtemp()
        # A same-host move of INSTANCE from ns_small to ns_large.
        self.owners_file = write_owners(
            {'ns_small': INSTANCE, 'ns_large': INSTANCE},
            incoming=['ns_large'])
        # Under TCG every second counts: show where they go.
        start = time.monotonic()
        self.addCleanup(lambda: sys.stderr.write(
            '(%.0f s) ' % (time.monotonic() - start)))

    def raises(self, exc_class, func, *args, **kwargs):
        with self.assertRaises(exc_class) as caught:
            func(*args, **kwargs)
        return caught.exception

    def fill(self, ns, zero_every=0):
        """Random bytes, every ``zero_every``-th MiB zero; return them."""
        data = bytearray(self.rng.randbytes(ns.size))
        if zero_every:
            for mib in range(0, ns.size // MIB, zero_every):
                data[mib * MIB:(mib + 1) * MIB] = bytes(MIB)
        with mapped(ns.path, ns.size) as m:
            m[:] = data
        return bytes(data)

    def read(self, ns):
        with mapped(ns.path, ns.size) as m:
            return bytes(m)

    def copy(self, pairs, **kwargs):
        return vpmem_copy.copy_namespaces(
            pairs, host=None, helper=HELPER, root_helper=(),
            **dict({'instance': INSTANCE}, **kwargs))

    def check(self, pairs, **kwargs):
        return vpmem_copy.check_namespaces(
            pairs, helper=HELPER, root_helper=(), instance=INSTANCE,
            **kwargs)

    def pipeline(self, src, dst, offset, length, dest_offset=None,
                 chunk=MIB):
        """Run ``send | receive`` of the helper for one range."""
        dest_offset = offset if dest_offset is None else dest_offset
        send = subprocess.Popen(
            HELPER + ['--instance', INSTANCE, 'send', '--namespace', src,
                      '--offset', str(offset), '--length', str(length),
                      '--chunk-size', str(chunk)],
            stdout=subprocess.PIPE)
        receive = subprocess.run(
            HELPER + ['--instance', INSTANCE, 'receive', '--namespace', dst,
                      '--offset',
                      str(dest_offset), '--length', str(length),
                      '--source-offset', str(offset)],
            stdin=send.stdout, capture_output=True, text=True)
        send.stdout.close()
        self.assertEqual(0, send.wait())
        self.assertEqual(0, receive.returncode, receive.stderr)
        return json.loads(receive.stdout.splitlines()[-1].split(' ', 1)[1])


class DeviceDaxTestCase(DaxTestBase):
    """The helper and the engine as root on real device-DAX."""

    # -- the allow-list -----------------------------------------------------

    def test_allow_list_comes_from_ndctl_and_nova_conf(self):
        known = helper.known_namespaces()
        self.assertEqual(
            {'ns_small': {'path': self.small.path, 'size': self.small.size,
                          'align': 2 * MIB},
             'ns_large': {'path': self.large.path, 'size': self.large.size,
                          'align': 2 * MIB}},
            known)
        # A device-DAX namespace that nova.conf does not list is refused,
        # and so is a device path: the helper takes namespace names only.
        for name in ('unlisted', self.small.path):
            exc = self.raises(helper.HelperError, helper.zero, name)
            self.assertEqual(wire.EXIT_DENIED, exc.code)
            self.assertIn('%s is not a vPMEM namespace of this host' % name,
                          str(exc))

    # -- copies -------------------------------------------------------------

    def test_copy_random_and_mostly_zero_data_across_streams(self):
        pair = vpmem_copy.NamespacePair('ns_small', 'ns_large',
                                        self.small.size)
        data = self.fill(self.small)
        self.fill(self.large)           # dirty destination
        self.copy([pair], streams=3)
        self.assertEqual(data, self.read(self.large)[:self.small.size])

        # All zero but one MiB: only that MiB is sent.
        data = self.fill(self.small, zero_every=1)
        with mapped(self.small.path, self.small.size) as m:
            m[5 * MIB:6 * MIB] = self.rng.randbytes(MIB)
            data = bytes(m)
        self.fill(self.large)
        results = self.copy([pair], streams=3)
        self.assertEqual(data, self.read(self.large)[:self.small.size])
        self.assertEqual(self.small.size - MIB, results[0]['zero_bytes'])

    def test_precopy_while_another_process_writes_the_device(self):
        # As a running guest's QEMU does: the source device is mapped and
        # written while the first pass reads it.
        size = self.small.size
        pair = vpmem_copy.NamespacePair('ns_small', 'ns_large', size)
        self.fill(self.small, zero_every=4)
        self.fill(self.large)
        _digest, record_digest = self.check([pair], precopy=True)
        script = (
            'import mmap, os, random, sys, time\n'
            'fd = os.open(sys.argv[1], os.O_RDWR)\n'
            'm = mmap.mmap(fd, int(sys.argv[2]), mmap.MAP_SHARED)\n'
            'print("mapped", flush=True)\n'
            'while True:\n'
            '    at = random.randrange(len(m) // 8192) * 4096\n'
            '    m[at:at + 4096] = os.urandom(4096)\n'
            '    time.sleep(0.002)\n')
        writer = subprocess.Popen([sys.executable, '-c', script,
                                   self.small.path, str(size)],
                                  stdout=subprocess.PIPE)
        try:
            self.assertEqual(b'mapped\n', writer.stdout.readline())
            record = vpmem_copy.precopy_namespaces(
                [pair], record_digest, helper=HELPER, root_helper=(),
                bandwidth=8 * MIB, instance=INSTANCE)
            # Only the first pass may read a device in use.
            exc = self.raises(exception.VPMEMCopyFailed, self.copy, [pair],
                              record=record)
            self.assertIn('in use by process %d' % writer.pid, str(exc))
        finally:
            writer.kill()
            writer.wait()
            writer.stdout.close()
        results = self.copy([pair], record=record, streams=2)
        self.assertEqual(self.read(self.small),
                         self.read(self.large)[:size])
        # The writes changed chunks of the first half only.
        self.assertGreater(results[0]['same_bytes'], 0)
        self.assertLess(results[0]['same_bytes'], size * 3 // 4)

    def test_unaligned_offsets_and_lengths(self):
        data = self.fill(self.small)
        self.fill(self.large)
        before = self.read(self.large)
        offset, length = 3 * MIB + 4097, 5 * MIB + 12345
        stats = self.pipeline('ns_small', 'ns_large', offset, length,
                              chunk=256 * 1024 + 3)
        self.assertEqual(length, stats['length'])
        after = self.read(self.large)
        self.assertEqual(data[offset:offset + length],
                         after[offset:offset + length])
        self.assertEqual(before[:offset], after[:offset])
        self.assertEqual(before[offset + length:], after[offset + length:])

    def test_resize_layout_on_a_larger_namespace(self):
        data = self.fill(self.small, zero_every=4)
        self.fill(self.large)           # dirty: nothing of it may remain
        self.copy([vpmem_copy.NamespacePair(
            'ns_small', 'ns_large', self.small.size, self.large.size,
            LABEL)], streams=2)
        got = self.read(self.large)
        size = self.small.size
        self.assertEqual(data[:size - LABEL], got[:size - LABEL])
        self.assertEqual(data[size - LABEL:], got[-LABEL:])
        self.assertEqual(bytes(self.large.size - size),
                         got[size - LABEL:-LABEL])

    def test_check_on_real_devices(self):
        pair = vpmem_copy.NamespacePair('ns_small', 'ns_large',
                                        self.small.size, self.large.size)
        self.assertIn(self.check([pair]), wire.available_digests())
        too_big = pair._replace(dest_size=self.large.size + MIB)
        self.raises(exception.VPMEMCopyCheckFailed, self.check, [too_big])

    # -- the namespaces of the instance -------------------------------------

    def test_receive_into_another_instances_namespace_is_refused(self):
        self.fill(self.small)
        theirs = self.fill(self.large)
        # ns_large holds another instance's data, which moves here: a copy
        # for INSTANCE that names it (stale or wrong) must not write it.
        write_owners({'ns_small': INSTANCE, 'ns_large': OTHER},
                     incoming=['ns_large'])
        pair = vpmem_copy.NamespacePair('ns_small', 'ns_large',
                                        self.small.size)
        refused = ('this host did not give namespace ns_large to instance '
                   '%s for its move here (it records %s)' % (INSTANCE, OTHER))
        exc = self.raises(exception.VPMEMCopyFailed, self.copy, [pair],
                          streams=1)
        self.assertIn('receive exited with %d' % wire.EXIT_DENIED,
                      str(exc))
        self.assertIn(refused, str(exc))
        exc = self.raises(exception.VPMEMCopyCheckFailed, self.check, [pair])
        self.assertIn(refused, str(exc))
        # Nor is it zeroed for INSTANCE, e.g. after its failed copy.
        exc = self.raises(helper.HelperError, helper.zero, 'ns_large')
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        self.assertEqual(theirs, self.read(self.large))

        # INSTANCE's own namespace once it runs here (no longer incoming):
        # no copy writes it.
        write_owners({'ns_small': INSTANCE, 'ns_large': INSTANCE})
        with open(os.devnull, 'rb') as empty:
            exc = self.raises(helper.HelperError, helper.receive,
                              'ns_large', 0, MIB, in_fd=empty.fileno())
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        self.assertIn('for its move here', str(exc))
        self.assertEqual(theirs, self.read(self.large))

    # -- zeroing and daxio ----------------------------------------------------

    def test_zero_a_range_and_a_namespace(self):
        data = self.fill(self.large)
        helper.zero('ns_large', out=open(os.devnull, 'w'),
                    offset=2 * MIB + 5, length=3 * MIB)
        got = self.read(self.large)
        self.assertEqual(bytes(3 * MIB), got[2 * MIB + 5:5 * MIB + 5])
        self.assertEqual(data[:2 * MIB + 5], got[:2 * MIB + 5])
        self.assertEqual(data[5 * MIB + 5:], got[5 * MIB + 5:])
        self.assertEqual([], vpmem_copy.zero_namespaces(
            ['ns_large'], helper=HELPER, root_helper=(), instance=INSTANCE))
        self.assertEqual(bytes(self.large.size), self.read(self.large))

    def test_daxio_reads_what_the_helper_wrote(self):
        data = self.fill(self.small, zero_every=3)
        self.fill(self.large)
        self.copy([vpmem_copy.NamespacePair(
            'ns_small', 'ns_large', self.small.size)])
        out = os.path.join(self.tmp, 'out')
        subprocess.run(['daxio', '--input', self.large.path, '--output', out,
                        '--len', str(self.small.size)], check=True,
                       capture_output=True)
        with open(out, 'rb') as f:
            self.assertEqual(data, f.read())

    def test_helper_reads_what_daxio_wrote(self):
        data = self.rng.randbytes(self.small.size)
        src = os.path.join(self.tmp, 'src')
        with open(src, 'wb') as f:
            f.write(data)
        subprocess.run(['daxio', '--input', src, '--output',
                        self.small.path], check=True, capture_output=True)
        self.copy([vpmem_copy.NamespacePair(
            'ns_small', 'ns_large', self.small.size)])
        self.assertEqual(data, self.read(self.large)[:self.small.size])

    def test_novas_daxio_zeroing_then_helper_sees_zero(self):
        self.fill(self.small)
        # nova.privsep.libvirt.cleanup_vpmem's command line.
        subprocess.run(['daxio', '-z', '-o', self.small.path], check=True,
                       capture_output=True)
        self.fill(self.large)
        results = self.copy([vpmem_copy.NamespacePair(
            'ns_small', 'ns_large', self.small.size)])
        self.assertEqual(self.small.size, results[0]['zero_bytes'])
        self.assertEqual(bytes(self.small.size),
                         self.read(self.large)[:self.small.size])

    # -- refusals and the device mapping -------------------------------------

    def test_device_mapped_by_another_process_is_refused(self):
        # As QEMU may: map the device, then close the file descriptor.
        # Python's mmap would keep a duplicate descriptor, so use libc's.
        script = (
            'import ctypes, os, sys, time\n'
            'libc = ctypes.CDLL(None, use_errno=True)\n'
            'libc.mmap.restype = ctypes.c_void_p\n'
            'libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, '
            'ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n'
            'fd = os.open(sys.argv[1], os.O_RDONLY)\n'
            'assert libc.mmap(None, 2 << 20, 1, 1, fd, 0) not in '
            '(None, 2 ** 64 - 1)\n'
            'os.close(fd)\n'
            'print("mapped", flush=True)\n'
            'time.sleep(60)\n')
        user = subprocess.Popen([sys.executable, '-c', script,
                                 self.small.path], stdout=subprocess.PIPE)
        try:
            self.assertEqual(b'mapped\n', user.stdout.readline())
            fd_dir = '/proc/%d/fd' % user.pid
            self.assertNotIn(self.small.path, [
                os.readlink(os.path.join(fd_dir, fd))
                for fd in os.listdir(fd_dir)])
            exc = self.raises(helper.HelperError, helper.zero, 'ns_small')
            self.assertIn('in use by process %d' % user.pid, str(exc))
        finally:
            user.kill()
            user.wait()
            user.stdout.close()

    def test_range_outside_the_device_is_refused(self):
        exc = self.raises(helper.HelperError, helper.send, 'ns_small',
                          self.small.size - MIB, 2 * MIB, MIB, 'none', 0)
        self.assertEqual(wire.EXIT_USAGE, exc.code)

    def test_persist_with_libpmem_on_the_device_mapping(self):
        dev = wire.Mapping(os.open(self.small.path, os.O_RDWR),
                           3 * MIB + 7, MIB, 2 * MIB, writable=True)
        try:
            self.assertTrue(dev.is_dax)
            self.assertIsNotNone(dev._persist)
            dev.view[:] = b'\xa5' * MIB
            dev.persist()
        finally:
            dev.close()
        self.assertEqual(b'\xa5' * MIB,
                         self.read(self.small)[3 * MIB + 7:4 * MIB + 7])


# Runs as the unprivileged user "nova": the copy engine as nova-compute
# runs it, with the default root helper "sudo -n", for INSTANCE. Makes each
# call of the JSON list in argv[1] in turn and prints the list of answers.
# (Importing nova takes most of a minute under TCG: tests share one
# process.)
_AS_NOVA = """
import json, sys
from nova.virt.libvirt import vpmem_copy
answers = []
for args in json.loads(sys.argv[1]):
    pairs = [vpmem_copy.NamespacePair(*p) for p in args.pop('pairs')]
    call = getattr(vpmem_copy, args.pop('call'))
    try:
        answers.append({'result': call(pairs, helper=%r, instance=%r,
                                       **args)})
    except Exception as e:
        answers.append({'error': '%%s: %%s' %% (type(e).__name__, e)})
print(json.dumps(answers))
""" % (HELPER, INSTANCE)


class SudoTestCase(DaxTestBase):
    """The helper through a real sudoers rule, for an unprivileged user."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The guest's root file system is a throw-away overlay on the host's.
        # Its own copies of the user databases first: the host may add or
        # remove a user nova of its own meanwhile, which the guest would
        # see.
        for path in ('/etc/passwd', '/etc/group', '/etc/shadow',
                     '/etc/gshadow'):
            with contextlib.suppress(FileNotFoundError):
                open(path, 'ab').close()
        subprocess.run(['useradd', '--system', '--no-create-home', 'nova'],
                       capture_output=True)
        with open('/etc/sudoers.d/nova-vpmem-copy', 'w') as f:
            f.write('nova ALL = (root) NOPASSWD: %s *\n' % ' '.join(HELPER))
        os.chmod('/etc/sudoers.d/nova-vpmem-copy', 0o440)
        with open('/etc/hosts', 'a') as f:
            f.write('127.0.1.1 %s\n' % os.uname().nodename)
        # nova must be able to run this virtualenv's Python.
        os.chmod('/root', 0o755)
        # As a nova-compute that runs as nova with no root helper, and with
        # a root helper command outside the sudoers rule. Neither touches a
        # namespace, so they share one process.
        pairs = [('ns_small', 'ns_large', cls.small.size)]
        cls.not_root, cls.outside_rule = cls.as_nova(
            ('check_namespaces', pairs, {'root_helper': []}),
            ('check_namespaces', pairs,
             {'root_helper': ['sudo', '-n', '/usr/bin/env']}))

    @staticmethod
    def as_nova(*calls):
        """Make each (function name, pairs, kwargs) call as nova."""
        out = subprocess.run(
            ['runuser', '-u', 'nova', '--', sys.executable, '-c', _AS_NOVA,
             json.dumps([dict(kwargs, call=call, pairs=pairs)
                         for call, pairs, kwargs in calls])],
            capture_output=True, text=True,
            env={'PYTHONPATH': os.environ['PYTHONPATH'],
                 'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'})
        if out.returncode:
            raise AssertionError(out.stderr)
        return json.loads(out.stdout.splitlines()[-1])

    def helpers_running(self):
        found = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    cmdline = f.read()
            except OSError:
                continue
            # sudo's, and the helper's once it started itself isolated.
            if re.search(b'(nova-vpmem-copy|nova[.]cmd[.]vpmem_copy)\0'
                         b'--instance\0[^\0]*\0(send|receive)\0', cmdline):
                found.append(int(pid))
        return found

    def test_copy_through_sudo_as_nova(self):
        data = self.fill(self.small, zero_every=2)
        self.fill(self.large)
        pairs = [('ns_small', 'ns_large', self.small.size, self.large.size,
                  LABEL)]
        check, copy = self.as_nova(('check_namespaces', pairs, {}),
                                   ('copy_namespaces', pairs, {'streams': 2}))
        self.assertIn(check.get('result'), wire.available_digests(), check)
        self.assertIn('result', copy, copy)
        got = self.read(self.large)
        self.assertEqual(data[:-LABEL], got[:self.small.size - LABEL])
        self.assertEqual(data[-LABEL:], got[-LABEL:])

    def assert_receives_as(self, argv, user):
        """A receive waits for its stream unprivileged, the device locked.

        :param argv: what starts the helper as root
        :param user: the user it must then run as
        """
        uid = pwd.getpwnam(user).pw_uid
        proc = subprocess.Popen(
            argv + ['--instance', INSTANCE, 'receive', '--namespace',
                    'ns_large', '--length', str(MIB)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            helper_pid = None
            deadline = time.monotonic() + 120
            while not helper_pid and time.monotonic() < deadline:
                time.sleep(0.2)
                for pid in self.helpers_running():
                    ids = self.ids(pid)
                    # The helper's own process: runuser's child is the
                    # user's for a moment before it becomes sudo, with the
                    # user's groups, under the same command line.
                    if (ids and ids['Uid'] == [uid] * 4 and
                            self.program(pid) == HELPER[0]):
                        helper_pid = pid
            self.assertIsNotNone(helper_pid, 'no helper runs as %s' % user)
            # Its saved and file-system ids too, and no supplementary group.
            self.assertEqual([], self.ids(helper_pid)['Groups'])
            with open('/proc/locks') as f:
                self.assertIn(' %d ' % helper_pid, f.read())
        finally:
            # No stream comes: stdin ends.
            _out, err = proc.communicate(b'', timeout=120)
        # The stream it waited for never came.
        self.assertEqual(wire.EXIT_TRUNCATED, proc.returncode, err)
        self.assertIn(b'stream truncated before its header', err)

    @staticmethod
    def program(pid):
        """The first word of a process's command line."""
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                return f.read().split(b'\0', 1)[0].decode()
        except FileNotFoundError:
            return None

    @staticmethod
    def ids(pid):
        """The Uid, Gid and Groups lines of a process's status."""
        try:
            with open('/proc/%d/status' % pid) as f:
                return {k: [int(v) for v in rest.split()]
                        for k, rest in (line.split(':', 1) for line in f)
                        if k in ('Uid', 'Gid', 'Groups')}
        except FileNotFoundError:
            return None

    def test_helper_drops_to_the_sudo_user_before_the_stream(self):
        self.assert_receives_as(
            ['runuser', '-u', 'nova', '--', 'sudo', '-n'] + HELPER, 'nova')

    def test_helper_run_by_root_drops_to_nobody(self):
        self.assert_receives_as(HELPER, 'nobody')

    def test_check_fails_when_the_helper_is_not_root(self):
        self.assertIn('Permission denied', self.not_root.get('error', ''),
                      self.not_root)

    def test_a_command_outside_the_sudoers_rule_is_refused(self):
        self.assertIn('a password is required',
                      self.outside_rule.get('error', ''), self.outside_rule)

    def test_a_stopped_copy_stops_the_root_helpers_behind_sudo(self):
        self.fill(self.small)
        pairs = [('ns_small', 'ns_large', self.small.size)]
        # 1 MiB/s: the copy is still running when its time is up.
        answer, = self.as_nova(('copy_namespaces', pairs,
                                {'streams': 2, 'bandwidth': MIB,
                                 'timeout': 3}))
        self.assertIn('timed out after 3 seconds', answer['error'])
        deadline = time.monotonic() + 10
        while self.helpers_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual([], self.helpers_running())


if __name__ == '__main__':
    start = time.monotonic()
    unittest.main(verbosity=2, exit=False)
    print('device-DAX tests took %.0f s' % (time.monotonic() - start))
