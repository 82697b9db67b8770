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

"""Data-path tests of the vPMEM copy: real bytes through real processes.

These start processes and a real sshd, so they are functional tests; the
ssh ones need root (the loopback sshd logs in as root) and say so when they
are skipped.

Files stand in for the device-DAX namespaces (the helper's test allow-list
names them), a real owners file in the [DEFAULT] state_path of a real nova
configuration file says which of them the helper may touch for the test's
instance, the root helper runs as the test user without sudo, and the
remote side is reached with the real ssh client through a real sshd started
on a random loopback port with its own host key, its own authorized key and
a pinned known_hosts file (host key checking stays on).
"""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import fixtures
from oslo_serialization import jsonutils
from oslo_utils.fixture import uuidsentinel as uuids
import testtools

import nova
from nova import exception
from nova import test
from nova.virt.libvirt import vpmem_copy

MiB = 1024 * 1024
SSHD = shutil.which('sshd') or '/usr/sbin/sshd'
HOST = 'vpmem-dest'
# nova-compute's [DEFAULT] host of the test's nova.conf, which names the
# owners file.
COMPUTE_HOST = 'vpmem-compute'
NOVA_ROOT = os.path.dirname(os.path.dirname(nova.__file__))

# Test-only entry point of the helper (argv: LISTING MODE ARGS...). There is
# no PMEM here: the regular files of the JSON LISTING ({name: {"path": path,
# "size": size, "align": align}}) are this host's namespaces, in place of
# ndctl's device-DAX ones. The helper reads nova.conf, next to LISTING and
# the test user's, for the [DEFAULT] state_path and host of the owners file
# (the real helper reads root's only). MODE
# breaks a copy the way hardware and networks do: "truncate" (send exits 0
# after half of its stream, as daxio does on short input), "corrupt" (one
# byte of send's stream flips), "die-send" (send dies of SIGBUS half-way, as
# on a poisoned PMEM line), "die-receive" (receive is killed half-way through
# its range). Any other mode or subcommand runs the real helper unchanged.
_WRAPPER = '''
import json, os, signal, subprocess, sys
listing, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
broken = "receive" if mode == "die-receive" else "send"
command = [a for a in args if a in ("send", "receive", "zero", "check")][:1]
if mode == "pass" or command != [broken]:
    from nova.cmd import vpmem_copy as helper
    with open(listing) as f:
        namespaces = json.load(f)
    helper.known_namespaces = lambda: namespaces
    helper.CONFIG_OWNER = os.geteuid()
    config = os.path.join(os.path.dirname(listing), "nova.conf")
    sys.exit(helper.main(["--config-file", config] + args))
cmd = [sys.executable, sys.argv[0], listing, "pass"] + args
if mode in ("truncate", "corrupt"):
    data = bytearray(subprocess.run(cmd, stdout=subprocess.PIPE).stdout)
    if mode == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x40
    sys.stdout.buffer.write(data)
    sys.exit(0)
budget = int(args[args.index("--length") + 1]) // 2
if mode == "die-send":
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    src, dst = proc.stdout.fileno(), 1
else:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, bufsize=0)
    src, dst = 0, proc.stdin.fileno()
while budget > 0:
    block = os.read(src, min(budget, 65536))
    if not block:
        break
    os.write(dst, block)
    budget -= len(block)
proc.kill()
proc.wait()
os.kill(os.getpid(), signal.SIGBUS if mode == "die-send" else signal.SIGKILL)
'''


def _have_ssh():
    return all(os.path.exists(p) for p in (SSHD,)) and all(
        shutil.which(p) for p in ('ssh', 'ssh-keygen'))


class SSHServerFixture(fixtures.Fixture):
    """A throw-away sshd on 127.0.0.1 and an ssh config to reach it."""

    def _setUp(self):
        self.dir = self.useFixture(fixtures.TempDir()).path
        join = lambda name: os.path.join(self.dir, name)  # noqa: E731
        for key in ('host_key', 'client_key'):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '',
                            '-f', join(key)], check=True)
        shutil.copy(join('client_key.pub'), join('authorized_keys'))
        sock = socket.socket()
        sock.bind(('127.0.0.1', 0))
        self.port = sock.getsockname()[1]
        sock.close()
        with open(join('sshd_config'), 'w') as f:
            f.write('\n'.join([
                'Port %d' % self.port, 'ListenAddress 127.0.0.1',
                'HostKey %s' % join('host_key'),
                'AuthorizedKeysFile %s' % join('authorized_keys'),
                'PasswordAuthentication no', 'KbdInteractiveAuthentication no',
                'PermitRootLogin prohibit-password', 'UsePAM no',
                'StrictModes no', 'PidFile %s' % join('sshd.pid'),
                'LogLevel ERROR', '']))
        with open(join('host_key.pub')) as f:
            host_key = f.read().split()[:2]
        with open(join('known_hosts'), 'w') as f:
            f.write('[127.0.0.1]:%d %s\n' % (self.port, ' '.join(host_key)))
        self.config = join('ssh_config')
        with open(self.config, 'w') as f:
            f.write('\n'.join([
                'Host %s' % HOST, '  HostName 127.0.0.1',
                '  Port %d' % self.port, '  User root',
                '  IdentityFile %s' % join('client_key'),
                '  IdentitiesOnly yes',
                '  UserKnownHostsFile %s' % join('known_hosts'),
                '  GlobalKnownHostsFile /dev/null', '']))
        os.makedirs('/run/sshd', exist_ok=True)
        self.sshd = subprocess.Popen(
            [SSHD, '-D', '-e', '-f', join('sshd_config')],
            stderr=open(join('sshd.log'), 'wb'), start_new_session=True)
        self.addCleanup(self.stop)
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', self.port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError('sshd did not start')

    def stop(self):
        # The session processes are in sshd's process group.
        try:
            os.killpg(self.sshd.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.sshd.wait()

    def restrict(self, command):
        """Let the client key run nothing but ``command`` (no shell)."""
        with open(os.path.join(self.dir, 'client_key.pub')) as f:
            key = f.read().strip()
        with open(os.path.join(self.dir, 'authorized_keys'), 'w') as f:
            f.write('restrict,command="%s" %s\n' % (command, key))

    def drop_connections(self):
        """Kill the per-connection sshd children: the link drops."""
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % pid) as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.sshd.pid:
                os.kill(int(pid), signal.SIGKILL)


class DataPathBase(test.NoDBTestCase):
    """Copies for instance ``self.instance`` between stand-in namespaces.

    The stand-in of namespace NAME is the file NAME in ``self.tmp``.
    """

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.instance = uuids.instance
        self.namespaces = {}
        self.owners, self.incoming = {}, {}
        self.listing = os.path.join(self.tmp, 'namespaces.json')
        self.wrapper = os.path.join(self.tmp, 'helper.py')
        with open(self.wrapper, 'w') as f:
            f.write(_WRAPPER)
        self.state_path = os.path.join(self.tmp, 'state')
        os.mkdir(self.state_path)
        conf = os.path.join(self.tmp, 'nova.conf')
        with open(conf, 'w') as f:
            f.write('[DEFAULT]\nstate_path = %s\nhost = %s\n' % (
                self.state_path, COMPUTE_HOST))
        os.chmod(conf, 0o600)

    def namespace(self, name, size, zero_ranges=(), content=None):
        """Create a stand-in namespace: random data with zero holes.

        This host's owners file records it as the instance's, and one
        whose name starts with "dst" as given to the instance for its
        move here, as nova-compute does for the namespaces of a move.

        :returns: the namespace's name
        """
        path = os.path.join(self.tmp, name)
        data = bytearray(os.urandom(size) if content is None else content)
        for start, length in zero_ranges:
            data[start:start + length] = bytes(length)
        with open(path, 'wb') as f:
            f.write(data)
        self.namespaces[name] = {'path': path, 'size': size, 'align': 4096}
        with open(self.listing, 'w') as f:
            f.write(jsonutils.dumps(self.namespaces))
        self.give(name, self.instance,
                  self.instance if name.startswith('dst') else None)
        return name

    def give(self, name, owner, incoming=None):
        """Record whose data namespace ``name`` holds in the owners file.

        :param incoming: the instance it was given to for a move here
        """
        self.owners[name] = owner
        if incoming:
            self.incoming[name] = incoming
        else:
            self.incoming.pop(name, None)
        path = os.path.join(self.state_path,
                            'vpmem-owners-%s.json' % COMPUTE_HOST)
        with open(path, 'w') as f:
            f.write(jsonutils.dumps({'owners': self.owners,
                                     'incoming': self.incoming}))

    def assert_guest_layout(self, host, size=8 * MiB, label=MiB):
        """Resize onto a dirty, larger namespace: what the guest sees."""
        src = self.namespace('src', size, [(2 * MiB, MiB)])
        dst = self.namespace('dst', size + 5 * MiB)   # random: dirty
        self.copy([vpmem_copy.NamespacePair(src, dst, size, size + 5 * MiB,
                                            label)],
                  host=host, streams=2)
        old, new = self.read(src), self.read(dst)
        self.assertEqual(old[:size - label], new[:size - label])
        self.assertEqual(old[size - label:], new[-label:])
        self.assertEqual(bytes(5 * MiB), new[size - label:-label])

    def read(self, name):
        with open(os.path.join(self.tmp, name), 'rb') as f:
            return f.read()

    def helper(self, mode='pass'):
        return ['env', 'PYTHONPATH=%s' % NOVA_ROOT, sys.executable,
                self.wrapper, self.listing, mode]

    def zero(self, names, host=None):
        return vpmem_copy.zero_namespaces(
            names, host=host, helper=self.helper(), root_helper=(),
            ssh_args=getattr(self, 'ssh_args', []), timeout=60,
            instance=self.instance)

    def check(self, pairs, host=None, **kwargs):
        kwargs.setdefault('instance', self.instance)
        return vpmem_copy.check_namespaces(
            pairs, host=host, helper=self.helper(), root_helper=(),
            ssh_args=kwargs.pop('ssh_args', getattr(self, 'ssh_args', [])),
            **kwargs)

    def copy(self, pairs, host=None, mode='pass', **kwargs):
        kwargs.setdefault('chunk_size', 256 * 1024)
        kwargs.setdefault('instance', self.instance)
        return vpmem_copy.copy_namespaces(
            pairs, host=host, helper=self.helper(mode), root_helper=(),
            ssh_args=kwargs.pop('ssh_args', getattr(self, 'ssh_args', [])),
            **kwargs)

    def prepare(self, pairs, host=None, **kwargs):
        kwargs.setdefault('chunk_size', 256 * 1024)
        kwargs.setdefault('instance', self.instance)
        return vpmem_copy.prepare_copy(
            pairs, host=host, helper=self.helper(), root_helper=(),
            ssh_args=kwargs.pop('ssh_args', getattr(self, 'ssh_args', [])),
            **kwargs)

    def assert_prepared_copy(self, host):
        """The receivers started ahead wait, then carry the copy."""
        size = 8 * MiB
        src = self.namespace('src', size, [(MiB, MiB)])
        dst = self.namespace('dst', size)
        pairs = [vpmem_copy.NamespacePair(src, dst, size)]
        before = self.read(dst)
        prepared = self.prepare(pairs, host=host, streams=2)
        receivers = [s.receiver for s in prepared.streams]
        time.sleep(0.5)
        self.assertEqual([None, None], [r.poll() for r in receivers])
        self.assertEqual(before, self.read(dst))
        # The copy may get equal pairs, not the same objects.
        results = self.copy([vpmem_copy.NamespacePair(*p) for p in pairs],
                            host=host, streams=2, prepared=prepared)
        self.assertEqual(self.read(src), self.read(dst))
        self.assertEqual(MiB, results[0]['zero_bytes'])
        self.assertEqual([0, 0], [r.returncode for r in receivers])

    def assert_cancelled_copy_writes_nothing(self, host):
        size = 4 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        pairs = [vpmem_copy.NamespacePair(src, dst, size)]
        before = self.read(dst)
        prepared = self.prepare(pairs, host=host, streams=2)
        receivers = [s.receiver for s in prepared.streams]
        self.assertRaises(ValueError, self.copy, pairs, host=host,
                          streams=1, prepared=prepared)
        self.assertNotIn(None, [r.poll() for r in receivers])
        self.assertEqual(before, self.read(dst))

    def assert_copy_only_into_what_the_move_was_given(self, host):
        """A copy writes only namespaces given to its instance for its move.

        Nor does it read another instance's, or zero one. Each case has a
        namespace of its own: the remote receiver of a failed copy may
        start after the copy gave up, and acts on the records of then.
        """
        size = 2 * MiB
        src = self.namespace('src', size)
        for i, (owner, incoming) in enumerate((
                (uuids.other, uuids.other), (uuids.other, None),
                # The instance's own namespace on this host (a shut-off
                # server of a reverted resize).
                (self.instance, None), (self.instance, uuids.other))):
            dst = self.namespace('dst%d' % i, size)
            self.give(dst, owner, incoming)
            before = self.read(dst)
            pair = vpmem_copy.NamespacePair(src, dst, size)
            refusal = ('this host did not give namespace %s to instance %s '
                       'for its move here' % (dst, self.instance))
            exc = self.assertRaises(exception.VPMEMCopyCheckFailed,
                                    self.check, [pair], host=host)
            self.assertIn(refusal, str(exc))
            for copy in (self.copy, self.precopy):
                exc = self.assertRaises(exception.VPMEMCopyFailed, copy,
                                        [pair], host=host)
                self.assertIn(refusal, str(exc))
            if owner != self.instance:
                self.assertEqual([dst], self.zero([dst], host))
            self.assertEqual(before, self.read(dst), (owner, incoming))
        # Another instance's source is not read either.
        self.give(src, uuids.other)
        dst = self.namespace('dst', size)
        before = self.read(dst)
        pair = vpmem_copy.NamespacePair(src, dst, size)
        refusal = 'this host did not give namespace %s to instance %s' % (
            src, self.instance)
        exc = self.assertRaises(exception.VPMEMCopyCheckFailed, self.check,
                                [pair], host=host)
        self.assertIn(refusal, str(exc))
        exc = self.assertRaises(exception.VPMEMCopyFailed, self.copy, [pair],
                                host=host)
        self.assertIn(refusal, str(exc))
        self.assertEqual(before, self.read(dst))
        # A copy for the instance it was given to goes through.
        dst = self.namespace('dst5', size)
        self.give(dst, uuids.other, uuids.other)
        self.copy([vpmem_copy.NamespacePair(src, dst, size)], host=host,
                  instance=uuids.other)
        self.assertEqual(self.read(src), self.read(dst))

    def precopy(self, pairs, host=None, mode='pass', **kwargs):
        kwargs.setdefault('chunk_size', 256 * 1024)
        kwargs.setdefault('digest', 'blake2b')
        kwargs.setdefault('instance', self.instance)
        return vpmem_copy.precopy_namespaces(
            pairs, host=host, helper=self.helper(mode), root_helper=(),
            ssh_args=kwargs.pop('ssh_args', getattr(self, 'ssh_args', [])),
            **kwargs)

    def write(self, name, offset, data):
        with open(os.path.join(self.tmp, name), 'r+b') as f:
            f.seek(offset)
            f.write(data)


class LocalDataPathTestCase(DataPathBase):
    """send | receive on the same host, no ssh."""

    def test_copy_random_and_zero_data_exactly(self):
        size = 8 * MiB
        src = self.namespace('src', size, [(MiB, 3 * MiB)])
        dst = self.namespace('dst', size + 2 * MiB)
        before = self.read(dst)
        progress = []
        results = self.copy([vpmem_copy.NamespacePair(src, dst, size)],
                            streams=3,
                            progress=lambda d, t: progress.append((d, t)))
        self.assertEqual(self.read(src), self.read(dst)[:size])
        # Without a destination size the bytes past the source size are
        # not touched.
        self.assertEqual(before[size:], self.read(dst)[size:])
        self.assertEqual(3 * MiB, results[0]['zero_bytes'])
        self.assertEqual((size, size), progress[-1])

    def test_larger_destination_gets_the_label_area_at_its_end(self):
        self.assert_guest_layout(host=None)

    def test_copy_with_receivers_started_ahead(self):
        self.assert_prepared_copy(host=None)

    def test_prepared_copy_for_other_streams_is_cancelled(self):
        self.assert_cancelled_copy_writes_nothing(host=None)

    def test_copy_only_into_what_the_move_was_given(self):
        self.assert_copy_only_into_what_the_move_was_given(host=None)

    def test_failure_names_the_destinations_to_zero(self):
        size = 4 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        exc = self.assertRaises(
            exception.VPMEMCopyFailed, self.copy,
            [vpmem_copy.NamespacePair(src, dst, size)], mode='corrupt')
        self.assertIn('does not match its digest', str(exc))
        self.assertEqual([dst], exc.touched)
        self.assertEqual([], self.zero(exc.touched))
        self.assertEqual(bytes(size), self.read(dst))

    def test_helper_exits_when_its_reader_goes_away(self):
        # A killed sudo leaves the helper behind; it stops at its next
        # write once nobody reads its stream.
        size = 16 * MiB
        src = self.namespace('src', size)
        send = subprocess.Popen(
            self.helper() + ['--instance', self.instance, 'send',
                             '--namespace', src, '--length', str(size),
                             '--chunk-size', str(MiB), '--rate',
                             str(4 * MiB)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(send.stderr.close)
        self.assertTrue(send.stdout.read(4096))
        send.stdout.close()
        self.assertNotEqual(0, send.wait(timeout=30))
        self.assertIn(b'Broken pipe', send.stderr.read())

    def test_check_agrees_on_a_digest(self):
        src = self.namespace('src', MiB)
        dst = self.namespace('dst', 2 * MiB)
        pair = vpmem_copy.NamespacePair(src, dst, MiB, 2 * MiB)
        self.assertIn(self.check([pair]), ('xxh3_64', 'blake3', 'blake2b'))
        self.assertEqual('none', self.check([pair], verify=False))

    def test_check_refuses_a_small_or_busy_destination(self):
        src = self.namespace('src', MiB)
        dst = self.namespace('dst', MiB)
        exc = self.assertRaises(
            exception.VPMEMCopyCheckFailed, self.check,
            [vpmem_copy.NamespacePair(src, dst, MiB, 2 * MiB)])
        self.assertIn('outside', str(exc))
        with open(os.path.join(self.tmp, dst), 'rb') as f:
            user = subprocess.Popen(['sleep', '60'], stdin=f)
        self.addCleanup(user.wait)
        self.addCleanup(user.kill)
        exc = self.assertRaises(
            exception.VPMEMCopyCheckFailed, self.check,
            [vpmem_copy.NamespacePair(src, dst, MiB)])
        self.assertIn('in use by process %d' % user.pid, str(exc))


# A stand-in for a guest that writes to its namespace while the first pass
# of a pre-copy reads it: keeps the file open (the helper then sees it in
# use) and overwrites a random 4 KiB block every millisecond until killed.
_WRITER = """
import os, random, sys, time
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR)
print("ready", flush=True)
while True:
    os.pwrite(fd, os.urandom(4096), random.randrange(size // 4096) * 4096)
    time.sleep(0.001)
"""


class PreCopyDataPathTestCase(DataPathBase):
    """A pre-copy's two passes, on this host."""

    def _pair(self, size=8 * MiB):
        src = self.namespace('src', size, [(2 * MiB, MiB)])
        dst = self.namespace('dst', size)       # random: dirty
        return vpmem_copy.NamespacePair(src, dst, size)

    def test_second_pass_sends_only_the_chunks_that_changed(self):
        pair = self._pair()
        record = self.precopy([pair], streams=2)
        self.assertEqual(self.read(pair.source), self.read(pair.dest))
        # Between the passes, of the 32 chunks of 256 KiB (28 of them data)
        # one changes by a few bytes, one becomes zero, and the 4 zero ones
        # get data.
        self.write(pair.source, 100, b'changed')
        self.write(pair.source, 5 * MiB, bytes(256 * 1024))
        self.write(pair.source, 2 * MiB, os.urandom(MiB))
        result = self.copy([pair], record=record, streams=2)[0]
        self.assertEqual(self.read(pair.source), self.read(pair.dest))
        self.assertEqual('blake2b', record.digest)
        self.assertEqual(26 * 256 * 1024, result['same_bytes'])
        self.assertEqual(256 * 1024, result['zero_bytes'])

    def test_guest_writes_during_the_first_pass_reach_the_destination(self):
        pair = self._pair(size=16 * MiB)
        writer = subprocess.Popen(
            [sys.executable, '-c', _WRITER, os.path.join(
                self.tmp, pair.source), str(pair.size)],
            stdout=subprocess.PIPE)
        self.addCleanup(writer.wait)
        self.addCleanup(writer.kill)
        writer.stdout.readline()
        # Only the first pass may read a namespace in use, and it is slow
        # enough here for the writer to change chunks behind it.
        exc = self.assertRaises(exception.VPMEMCopyFailed, self.copy,
                                [pair])
        self.assertIn('in use by process %d' % writer.pid, str(exc))
        record = self.precopy([pair], bandwidth=8 * MiB)
        writer.kill()
        writer.wait()
        self.assertNotEqual(self.read(pair.source), self.read(pair.dest))
        result = self.copy([pair], record=record)[0]
        self.assertEqual(self.read(pair.source), self.read(pair.dest))
        self.assertLess(result['same_bytes'], pair.size - MiB)

    def test_stale_record_is_caught_and_the_chunk_sent_again(self):
        pair = self._pair()
        record = self.precopy([pair])
        # The destination changes behind the record's back: its digest of
        # the chunk no longer matches, whatever the record says.
        self.write(pair.dest, 7 * MiB + 10, b'stale')
        # And a record that claims a chunk the source never had, with the
        # right fast digest: the cryptographic one decides.
        key = next(k for k in record.chunks if k[2] == 0)
        record.chunks[key] = (bytes(32), record.chunks[key][1])
        with self.assertLogs(vpmem_copy.LOG.logger, 'WARNING') as logs:
            self.copy([pair], record=record)
        self.assertEqual(self.read(pair.source), self.read(pair.dest))
        self.assertIn('1 byte ranges of vPMEM data did not match',
                      logs.output[0])

    def test_time_limit_ends_the_first_pass_and_the_second_sends_the_rest(
            self):
        pair = self._pair(size=16 * MiB)
        start = time.monotonic()
        record = self.precopy([pair], streams=1, bandwidth=4 * MiB,
                              time_limit=1)
        self.assertLess(time.monotonic() - start, 3)
        self.assertGreater(record.recorded_bytes(), 0)
        self.assertLess(record.recorded_bytes(), 8 * MiB)
        result = self.copy([pair], record=record, streams=1)[0]
        self.assertEqual(self.read(pair.source), self.read(pair.dest))
        self.assertEqual(record.recorded_bytes(), result['same_bytes'])

    def test_larger_destination_keeps_the_label_area_at_its_end(self):
        size, label = 8 * MiB, MiB
        src = self.namespace('src', size, [(2 * MiB, MiB)])
        dst = self.namespace('dst', size + 5 * MiB)
        pair = vpmem_copy.NamespacePair(src, dst, size, size + 5 * MiB,
                                        label)
        record = self.precopy([pair], streams=2)
        self.write(src, size - 100, b'label')
        self.copy([pair], record=record, streams=2)
        old, new = self.read(src), self.read(dst)
        self.assertEqual(old[:size - label], new[:size - label])
        self.assertEqual(old[size - label:], new[-label:])
        self.assertEqual(bytes(5 * MiB), new[size - label:-label])

    def test_first_pass_failure_names_the_destinations_to_zero(self):
        pair = self._pair(size=4 * MiB)
        exc = self.assertRaises(exception.VPMEMCopyFailed, self.precopy,
                                [pair], mode='corrupt')
        self.assertIn('does not match its digest', str(exc))
        self.assertEqual([pair.dest], exc.touched)
        self.assertEqual([], self.zero(exc.touched))
        self.assertEqual(bytes(pair.size), self.read(pair.dest))

    def test_first_pass_needs_a_cryptographic_digest(self):
        self.assertRaises(ValueError, self.precopy, [self._pair(MiB)],
                          digest='xxh3_64')
        pair = self._pair(MiB)
        digest, record_digest = self.check([pair], precopy=True,
                                           verify=False)
        self.assertEqual('none', digest)
        self.assertIn(record_digest, vpmem_copy.CRYPTO_DIGESTS)


@testtools.skipUnless(_have_ssh(), 'sshd, ssh and ssh-keygen are required '
                      '(apt-get install openssh-server)')
@testtools.skipUnless(os.geteuid() == 0, 'the loopback sshd logs in as root')
class SSHDataPathTestCase(DataPathBase):
    """send | ssh | receive through a real loopback sshd."""

    def setUp(self):
        super().setUp()
        self.sshd = self.useFixture(SSHServerFixture())
        self.ssh_args = ['-F', self.sshd.config]

    def test_copy_random_and_zero_data_exactly(self):
        size = 8 * MiB
        pairs = []
        for i in range(2):
            src = self.namespace('src%d' % i, size,
                                 [(i * MiB, 2 * MiB), (6 * MiB, MiB)])
            dst = self.namespace('dst%d' % i, size)
            pairs.append(vpmem_copy.NamespacePair(src, dst, size))
        results = self.copy(pairs, host=HOST, streams=2)
        for pair, result in zip(pairs, results):
            self.assertEqual(self.read(pair.source), self.read(pair.dest))
            self.assertEqual(3 * MiB, result['zero_bytes'])

    def test_larger_destination_gets_the_label_area_at_its_end(self):
        self.assert_guest_layout(host=HOST)

    def test_copy_without_verification(self):
        size = 2 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        results = self.copy([vpmem_copy.NamespacePair(src, dst, size)],
                            host=HOST, verify=False)
        self.assertEqual(self.read(src), self.read(dst))
        self.assertEqual('none', results[0]['digest'])

    def _assert_failed_and_cleaned(self, mode, expected, **kwargs):
        size = 4 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        exc = self.assertRaises(
            exception.VPMEMCopyFailed, self.copy,
            [vpmem_copy.NamespacePair(src, dst, size)], host=HOST,
            mode=mode, **kwargs)
        self.assertIn(expected, str(exc))
        self.assertEqual([dst], exc.touched)
        self.assertEqual([], self.zero(exc.touched, HOST))
        self.assertEqual(bytes(size), self.read(dst))
        return exc

    def test_truncated_stream_detected(self):
        # The sender exits 0 after half of its stream, the way daxio exits
        # 0 on short input: only the receiver's checks catch it.
        self._assert_failed_and_cleaned('truncate', 'truncated')

    def test_corrupted_byte_detected(self):
        self._assert_failed_and_cleaned('corrupt',
                                        'does not match its digest')

    def test_ssh_dropped_mid_stream_detected(self):
        size = 96 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        dropped = []

        def progress(done, total):
            # The receiver reports progress every 64 MiB; the rate limit
            # leaves the last 32 MiB still to come when the link drops.
            if not dropped:
                self.sshd.drop_connections()
                dropped.append(done)

        exc = self.assertRaises(
            exception.VPMEMCopyFailed, self.copy,
            [vpmem_copy.NamespacePair(src, dst, size)], host=HOST,
            streams=1, chunk_size=MiB, bandwidth=48 * MiB,
            progress=progress)
        self.assertTrue(dropped)
        self.assertIn('exited with', str(exc))
        # The link came back for the cleanup, which zeroes the destination.
        self.assertEqual([dst], exc.touched)
        self.assertEqual([], self.zero(exc.touched, HOST))
        self.assertEqual(bytes(size), self.read(dst))

    def test_unknown_host_key_refused(self):
        with open(os.path.join(self.sshd.dir, 'known_hosts'), 'w') as f:
            f.write('')
        size = 2 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        before = self.read(dst)
        pair = vpmem_copy.NamespacePair(src, dst, size)
        exc = self.assertRaises(exception.VPMEMCopyCheckFailed, self.check,
                                [pair], host=HOST)
        self.assertIn('Host key verification failed', str(exc))
        exc = self.assertRaises(exception.VPMEMCopyFailed, self.copy,
                                [pair], host=HOST)
        self.assertIn('Host key verification failed', str(exc))
        # Nothing was written and the cleanup could not get in either.
        self.assertEqual(before, self.read(dst))
        self.assertEqual([dst], self.zero(exc.touched, HOST))

    def _change_host_key(self):
        other = os.path.join(self.sshd.dir, 'other_key')
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f',
                        other], check=True)
        with open(other + '.pub') as f:
            key = ' '.join(f.read().split()[:2])
        with open(os.path.join(self.sshd.dir, 'known_hosts'), 'w') as f:
            f.write('[127.0.0.1]:%d %s\n' % (self.sshd.port, key))

    def test_changed_host_key_refused_whatever_ssh_config_says(self):
        # What upstream's ssh guide for migrations tells operators to set.
        with open(self.sshd.config, 'a') as f:
            f.write('  StrictHostKeyChecking no\n')
        self._change_host_key()
        # Plain ssh with that configuration connects to the changed host.
        plain = subprocess.run(['ssh', '-F', self.sshd.config, '-o',
                                'BatchMode=yes', HOST, 'true'],
                               capture_output=True, text=True)
        self.assertEqual(0, plain.returncode, plain.stderr)
        self.assertIn('REMOTE HOST IDENTIFICATION HAS CHANGED', plain.stderr)
        src = self.namespace('src', MiB)
        dst = self.namespace('dst', MiB)
        exc = self.assertRaises(
            exception.VPMEMCopyCheckFailed, self.check,
            [vpmem_copy.NamespacePair(src, dst, MiB)], host=HOST)
        self.assertIn('Host key verification failed', str(exc))

    def test_client_config_cannot_divert_the_copy(self):
        # A nova user's ssh_config that sends connections elsewhere, shares
        # them, runs a local command or another remote command.
        marker = os.path.join(self.sshd.dir, 'local-command-ran')
        control = os.path.join(self.sshd.dir, 'control')
        with open(self.sshd.config, 'a') as f:
            f.write('\n'.join([
                '  ProxyCommand /bin/false', '  ControlMaster auto',
                '  ControlPath %s' % control, '  ControlPersist yes',
                '  PermitLocalCommand yes', '  LocalCommand touch %s' % marker,
                '  RemoteCommand /bin/false', '  RequestTTY force', '']))
        plain = subprocess.run(['ssh', '-F', self.sshd.config, '-o',
                                'BatchMode=yes', HOST],
                               capture_output=True, text=True)
        self.assertNotEqual(0, plain.returncode)
        src = self.namespace('src', 2 * MiB, [(0, MiB)])
        dst = self.namespace('dst', 2 * MiB)
        self.copy([vpmem_copy.NamespacePair(src, dst, 2 * MiB)], host=HOST)
        self.assertEqual(self.read(src), self.read(dst))
        self.assertFalse(os.path.exists(marker))
        self.assertFalse(os.path.exists(control))

    def test_copy_with_receivers_started_ahead(self):
        self.assert_prepared_copy(host=HOST)

    def test_prepared_copy_for_other_streams_is_cancelled(self):
        self.assert_cancelled_copy_writes_nothing(host=HOST)

    def test_copy_only_into_what_the_move_was_given(self):
        self.assert_copy_only_into_what_the_move_was_given(host=HOST)

    def test_precopy_sends_only_what_changed(self):
        size = 8 * MiB
        src = self.namespace('src', size, [(MiB, MiB)])
        dst = self.namespace('dst', size)
        pair = vpmem_copy.NamespacePair(src, dst, size)
        record = self.precopy([pair], host=HOST, streams=2)
        self.write(src, 3 * MiB, os.urandom(MiB))
        result = self.copy([pair], host=HOST, record=record, streams=2)[0]
        self.assertEqual(self.read(src), self.read(dst))
        self.assertEqual(6 * MiB, result['same_bytes'])

    def test_pinned_known_hosts_file_is_the_only_one_used(self):
        pinned = os.path.join(self.sshd.dir, 'pinned')
        shutil.copy(os.path.join(self.sshd.dir, 'known_hosts'), pinned)
        self._change_host_key()         # the file the ssh config names
        src = self.namespace('src', MiB)
        dst = self.namespace('dst', MiB)
        pair = vpmem_copy.NamespacePair(src, dst, MiB)
        self.assertRaises(exception.VPMEMCopyCheckFailed, self.check,
                          [pair], host=HOST)
        self.check([pair], host=HOST, known_hosts=pinned)
        self.copy([pair], host=HOST, known_hosts=pinned)
        self.assertEqual(self.read(src), self.read(dst))

    def test_source_that_dies_mid_stream_fails_the_copy(self):
        # SIGBUS half-way: what reading a poisoned PMEM line does.
        self._assert_failed_and_cleaned('die-send', 'exited with')

    def test_receiver_killed_mid_stream_fails_the_copy(self):
        self._assert_failed_and_cleaned('die-receive', 'exited with')

    def test_unreachable_destination_fails_before_writing(self):
        src = self.namespace('src', MiB)
        dst = self.namespace('dst', MiB)
        before = self.read(dst)
        pair = vpmem_copy.NamespacePair(src, dst, MiB)
        self.sshd.stop()
        exc = self.assertRaises(exception.VPMEMCopyCheckFailed, self.check,
                                [pair], host=HOST)
        self.assertIn('Connection refused', str(exc))
        exc = self.assertRaises(exception.VPMEMCopyFailed, self.copy,
                                [pair], host=HOST)
        self.assertIn('Connection refused', str(exc))
        self.assertEqual(before, self.read(dst))

    def test_copy_past_its_time_limit_is_stopped(self):
        size = 8 * MiB
        src = self.namespace('src', size)
        dst = self.namespace('dst', size)
        start = time.monotonic()
        # 1 MiB/s: eight seconds of copy for a two-second limit.
        exc = self.assertRaises(
            exception.VPMEMCopyFailed, self.copy,
            [vpmem_copy.NamespacePair(src, dst, size)], host=HOST,
            streams=2, bandwidth=MiB, timeout=2)
        self.assertLess(time.monotonic() - start, 8)
        self.assertIn('timed out after 2 seconds', str(exc))
        self.assertEqual([dst], exc.touched)
        # No helper is left writing: the zeroing takes the device's lock.
        self.assertEqual([], self.zero(exc.touched, HOST))
        self.assertEqual(bytes(size), self.read(dst))

    def _restricted_ssh(self, *command):
        return subprocess.run(
            ['ssh', '-F', self.sshd.config, '-o', 'BatchMode=yes', HOST] +
            list(command), capture_output=True)

    def test_restricted_key_copies_and_can_do_nothing_else(self):
        # The copy's own key, as the admin guide sets it up: a forced
        # command that runs only the helper's receive, zero and check.
        gate = ' '.join(shlex.quote(a) for a in [
            sys.executable, '-m', 'nova.cmd.vpmem_copy_gate'] + self.helper())
        self.sshd.restrict('env PYTHONPATH=%s %s' % (NOVA_ROOT, gate))
        size = 2 * MiB
        src = self.namespace('src', size, [(0, MiB)])
        dst = self.namespace('dst', size)
        pair = vpmem_copy.NamespacePair(src, dst, size)
        self.check([pair], host=HOST)
        self.copy([pair], host=HOST)
        self.assertEqual(self.read(src), self.read(dst))
        self.assertEqual([], self.zero([dst], HOST))
        self.assertEqual(bytes(size), self.read(dst))
        # No shell, no other command, no reading a namespace.
        for command in ((), ('id',), ('cat', os.path.join(self.tmp, src)),
                        tuple(self.helper()) + (
                            '--instance', self.instance, 'send',
                            '--namespace', src, '--length', str(size)),
                        tuple(self.helper()) + (
                            '--instance', self.instance, 'check',
                            '--sources', '--namespace', src, '--length',
                            str(size))):
            out = self._restricted_ssh(*command)
            self.assertEqual(6, out.returncode, (command, out.stderr))
            self.assertEqual(b'', out.stdout)
            self.assertIn(b'this key only runs nova-vpmem-copy', out.stderr)
