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

"""Unit tests of the vPMEM copy engine's command building and checks.

Bytes moving through real processes and a real sshd are covered by the
functional tests in nova.tests.functional.libvirt.test_vpmem_copy_datapath.
"""

import shlex
import subprocess
from unittest import mock

import fixtures
from oslo_serialization import jsonutils
from oslo_utils.fixture import uuidsentinel as uuids

from nova import exception
from nova import test
from nova.virt.libvirt import vpmem_copy

MiB = 1024 * 1024
# Not UUIDs: what no helper call may be made for.
BAD_INSTANCES = (None, '', 'instance-00000001', '--instance',
                 'ns_0; rm -rf /', uuids.instance.upper(),
                 uuids.instance + '\n', uuids.instance.replace('-', ''),
                 'urn:uuid:' + uuids.instance)
# Not namespace names: device paths (the old interface), option-like,
# hidden, with spaces or shell characters, or empty.
BAD_NAMES = ('/dev/dax0.0', 'dax0.0/x', '-ns_0', '--namespace', '.ns_0',
             '../ns_0', 'ns 0', 'ns_0;id', 'ns:0', '')


def _transport(host=None, helper=('nova-vpmem-copy',),
               root_helper=('sudo', '-n'), cipher='aes128-ctr', ssh_args=(),
               known_hosts=None, instance=uuids.instance):
    return vpmem_copy._Transport(host, helper, root_helper, cipher, ssh_args,
                                 known_hosts, instance)


class TransportTestCase(test.NoDBTestCase):

    def test_local_argv(self):
        t = _transport(cipher='aes128-gcm@openssh.com')
        self.assertEqual(
            ['sudo', '-n', 'nova-vpmem-copy', '--instance', uuids.instance,
             'zero', '--namespace', 'ns_0'],
            t.remote('zero', '--namespace', 'ns_0'))

    def test_instance_comes_before_the_subcommand(self):
        # The helper's --instance is an option of the helper itself, not of
        # its subcommands: it is given after the helper's argv, before the
        # subcommand, locally and on the remote host.
        for host in (None, 'dest'):
            t = _transport(host=host, helper=['nova-vpmem-copy',
                                              '--config-file', '/etc/n.conf'])
            for cmd in ('send', 'receive', 'zero', 'check'):
                argv = t.remote(cmd, '--namespace', 'ns_0')
                if host:
                    argv = shlex.split(argv[-1])
                self.assertEqual(
                    ['sudo', '-n', 'nova-vpmem-copy', '--config-file',
                     '/etc/n.conf', '--instance', uuids.instance, cmd,
                     '--namespace', 'ns_0'], argv)
            self.assertEqual(
                ['sudo', '-n', 'nova-vpmem-copy', '--config-file',
                 '/etc/n.conf', '--instance', uuids.instance, 'send'],
                t.local('send'))

    def test_non_uuid_instance_refused(self):
        for instance in BAD_INSTANCES:
            for host in (None, 'dest'):
                self.assertRaises(ValueError, _transport, host=host,
                                  instance=instance)

    def test_remote_argv_is_quoted_with_host_key_checking_on(self):
        t = _transport(host='dest.example.org',
                       cipher='aes256-gcm@openssh.com',
                       ssh_args=['-F', '/etc/cfg'])
        argv = t.remote('receive', '--namespace', 'ns_1', '--length', 5)
        # Options given first on the command line beat any ssh_config.
        self.assertEqual(
            ['ssh', '-T', '-o', 'BatchMode=yes', '-o',
             'StrictHostKeyChecking=yes', '-o', 'Compression=no', '-o',
             'ConnectTimeout=10', '-o', 'ServerAliveInterval=5', '-o',
             'ServerAliveCountMax=3', '-o', 'ControlMaster=no', '-o',
             'ControlPath=none', '-o', 'ProxyCommand=none', '-o',
             'ProxyJump=none', '-o', 'CanonicalizeHostname=no', '-o',
             'VerifyHostKeyDNS=no', '-o', 'UpdateHostKeys=no', '-o',
             'ForwardAgent=no', '-o', 'ForwardX11=no', '-o',
             'ClearAllForwardings=yes', '-o', 'PermitLocalCommand=no', '-o',
             'RemoteCommand=none', '-o', 'RequestTTY=no', '-c',
             'aes256-gcm@openssh.com', '-F', '/etc/cfg', '--',
             'dest.example.org'], argv[:-1])
        self.assertEqual(
            ['sudo', '-n', 'nova-vpmem-copy', '--instance', uuids.instance,
             'receive', '--namespace', 'ns_1', '--length', '5'],
            shlex.split(argv[-1]))
        self.assertNotIn('-C', argv)

    def test_pinned_known_hosts_file(self):
        t = _transport(host='dest', known_hosts='/etc/nova/known_hosts')
        argv = t.remote('zero', '--namespace', 'ns_1')
        self.assertIn('UserKnownHostsFile=/etc/nova/known_hosts', argv)
        self.assertIn('GlobalKnownHostsFile=/dev/null', argv)
        self.assertRaises(ValueError, _transport, host='dest',
                          known_hosts='/a b')

    def test_stop_terminates_first_so_sudo_relays_it(self):
        quits, stuck, done = mock.Mock(), mock.Mock(), mock.Mock()
        quits.poll.return_value = stuck.poll.return_value = None
        stuck.wait.side_effect = subprocess.TimeoutExpired('helper', 1)
        done.poll.return_value = 0
        with mock.patch.object(vpmem_copy, 'KILL_GRACE', 0):
            vpmem_copy._stop([quits, stuck, done])
        quits.terminate.assert_called_once_with()
        quits.kill.assert_not_called()
        stuck.terminate.assert_called_once_with()
        stuck.kill.assert_called_once_with()
        done.terminate.assert_not_called()

    def test_remote_argument_with_shell_characters_stays_one_word(self):
        t = _transport(host='h', helper=['/opt/my helper'], root_helper=[])
        argv = t.remote('zero', '--namespace', 'x; rm -rf /')
        self.assertEqual(['/opt/my helper', '--instance', uuids.instance,
                          'zero', '--namespace', 'x; rm -rf /'],
                         shlex.split(argv[-1]))

    def test_bad_host_and_cipher_refused(self):
        for host in ('-oProxyCommand=x', 'a b', 'h;id'):
            self.assertRaises(ValueError, _transport, host=host)
        self.assertRaises(ValueError, _transport, host='h',
                          cipher='-oProxyCommand=x')
        # IPv6 literals are fine.
        _transport(host='fe80::1%eth0')


class CopyNamespacesTestCase(test.NoDBTestCase):

    def test_bad_names_and_sizes_refused_before_running_anything(self):
        bad = [vpmem_copy.NamespacePair('/dev/dax0.0', 'ns_1', 1),
               vpmem_copy.NamespacePair('ns_0', '/dev/dax0.1', 1),
               vpmem_copy.NamespacePair('ns_0', '../ns_1', 1),
               vpmem_copy.NamespacePair('ns_0', 'ns 1', 1),
               vpmem_copy.NamespacePair('ns_0', 'ns_1\n', 1),
               vpmem_copy.NamespacePair('ns_0', 'ns_1', 0)]
        with mock.patch('subprocess.Popen') as popen:
            for pair in bad:
                self.assertRaises(ValueError, vpmem_copy.copy_namespaces,
                                  [pair], host='h', instance=uuids.instance)
        popen.assert_not_called()

    def test_bad_label_and_destination_sizes_refused(self):
        for pair in (
                vpmem_copy.NamespacePair('ns_0', 'ns_1', MiB, 2 * MiB, MiB),
                vpmem_copy.NamespacePair('ns_0', 'ns_1', 2 * MiB, MiB, 0),
                vpmem_copy.NamespacePair('ns_0', 'ns_1', 2 * MiB, 2 * MiB,
                                         -1)):
            self.assertRaises(ValueError, vpmem_copy.copy_namespaces,
                              [pair], instance=uuids.instance)

    def test_same_size_is_one_segment(self):
        pair = vpmem_copy.NamespacePair('a', 'b', 8 * MiB, 8 * MiB, MiB)
        self.assertEqual([(0, 0, 8 * MiB)], pair.segments())
        self.assertIsNone(pair.gap())

    def test_larger_destination_keeps_the_label_area_at_the_end(self):
        pair = vpmem_copy.NamespacePair('a', 'b', 8 * MiB, 12 * MiB, MiB)
        self.assertEqual([(0, 0, 7 * MiB), (7 * MiB, 11 * MiB, MiB)],
                         pair.segments())
        # Between the data and the label area.
        self.assertEqual((7 * MiB, 4 * MiB), pair.gap())

    def test_larger_destination_without_label_area(self):
        pair = vpmem_copy.NamespacePair('a', 'b', 8 * MiB, 12 * MiB)
        self.assertEqual([(0, 0, 8 * MiB)], pair.segments())
        self.assertEqual((8 * MiB, 4 * MiB), pair.gap())

    def test_split_ranges_are_chunk_aligned_and_cover_everything(self):
        for size, streams in ((10 * MiB, 3), (MiB, 4), (7, 2),
                              (2 * MiB + 1, 2)):
            ranges = vpmem_copy._split(size, streams, MiB)
            self.assertLessEqual(len(ranges), streams)
            pos = 0
            for off, length in ranges:
                self.assertEqual(pos, off)
                self.assertEqual(0, off % MiB)
                pos += length
            self.assertEqual(size, pos)

    @mock.patch('subprocess.Popen')
    def test_commands_per_range(self, mock_popen):
        # The receiver starts first, and waits for the sender's stream.
        mock_popen.side_effect = [mock.Mock(), RuntimeError('stop')]
        self.assertRaises(RuntimeError, vpmem_copy.copy_namespaces,
                          [vpmem_copy.NamespacePair('ns_0', 'ns_1',
                                                    4 * MiB)],
                          host='dest', streams=2, verify=False,
                          bandwidth=10 * MiB, helper=['helper'],
                          root_helper=['sudo', '-n'],
                          instance=uuids.instance)
        receive = mock_popen.call_args_list[0][0][0]
        self.assertEqual(['ssh', '-T'], receive[:2])
        self.assertEqual('sudo -n helper --instance %s receive --namespace '
                         'ns_1 --offset 0 --length %d' % (uuids.instance,
                                                           2 * MiB),
                         receive[-1])
        send = mock_popen.call_args_list[1][0][0]
        self.assertEqual(
            ['sudo', '-n', 'helper', '--instance', uuids.instance, 'send',
             '--namespace', 'ns_0', '--offset', '0', '--length', str(2 * MiB),
             '--chunk-size', str(vpmem_copy.CHUNK_SIZE), '--rate',
             str(5 * MiB), '--digest', 'none'], send)


class ForTheInstanceTestCase(test.NoDBTestCase):
    """Every helper call acts for one instance, on namespaces by name.

    Each host's helper touches only the namespaces its host recorded as
    the instance's, so that every call must say which instance it is for,
    before the subcommand, and name the namespaces it uses.
    """

    def setUp(self):
        super().setUp()
        self.pair = vpmem_copy.NamespacePair('ns_0', 'ns_1', 4 * MiB)
        self.popen = self.useFixture(fixtures.MockPatch(
            'subprocess.Popen')).mock
        self.run_helper = self.useFixture(fixtures.MockPatchObject(
            vpmem_copy, '_run_helper', return_value=(
                0, jsonutils.dump_as_bytes(
                    {'protocol': vpmem_copy.PROTOCOL,
                     'digests': ['blake2b']}), ''))).mock

    def _calls(self):
        """Each helper call made, as (where, argv), without the ssh part of
        those on the remote host.
        """
        argvs = [c[0][0] for c in self.popen.call_args_list +
                 self.run_helper.call_args_list]
        return [('remote', shlex.split(argv[-1])) if argv[0] == 'ssh' else
                ('local', argv) for argv in argvs]

    def _assert_for_the_instance(self, calls, expected):
        """The calls are the expected subcommands, all for the instance.

        :param expected: [(where, subcommand, [namespace names])]
        """
        prefix = ['sudo', '-n', 'nova-vpmem-copy', '--instance',
                  uuids.instance]
        for where, argv in calls:
            self.assertEqual(prefix, argv[:len(prefix)], argv)
            self.assertNotIn('--device', argv)
        self.assertEqual(
            expected,
            [(where, argv[len(prefix)],
              [argv[i + 1] for i, arg in enumerate(argv)
               if arg == '--namespace'])
             for where, argv in calls])

    def test_check_checks_the_sources_here_and_destinations_there(self):
        self.assertEqual('blake2b', vpmem_copy.check_namespaces(
            [self.pair], host='dest', instance=uuids.instance))
        calls = self._calls()
        self._assert_for_the_instance(
            calls, [('local', 'check', ['ns_0']),
                    ('remote', 'check', ['ns_1'])])
        # The guest may still map its sources: only they are checked as
        # such, which the helper allows for what this host recorded as the
        # instance's.
        self.assertEqual(['--sources', '--namespace', 'ns_0', '--length',
                          str(4 * MiB)], calls[0][1][6:])
        self.assertEqual(['--namespace', 'ns_1', '--length', str(4 * MiB)],
                         calls[1][1][6:])

    def test_zero_returns_the_names_not_zeroed(self):
        self.run_helper.side_effect = [(0, b'', ''), (1, b'', 'busy'),
                                       (None, b'', 'timed out')]
        self.assertEqual(['ns_1', 'ns_2'], vpmem_copy.zero_namespaces(
            ['ns_0', 'ns_1', 'ns_2'], host='dest', instance=uuids.instance))
        self._assert_for_the_instance(
            self._calls(), [('remote', 'zero', [name])
                            for name in ('ns_0', 'ns_1', 'ns_2')])

    def test_zero_here(self):
        self.assertEqual([], vpmem_copy.zero_namespaces(
            ['ns_0'], instance=uuids.instance))
        self._assert_for_the_instance(self._calls(),
                                      [('local', 'zero', ['ns_0'])])

    def test_prepare_starts_the_receivers_for_the_instance(self):
        vpmem_copy.prepare_copy([self.pair], host='dest', streams=2,
                                instance=uuids.instance).cancel()
        self._assert_for_the_instance(
            self._calls(), [('remote', 'receive', ['ns_1'])] * 2)

    def test_copy_and_zeroing_the_gap_for_the_instance(self):
        pair = self.pair._replace(dest_size=8 * MiB)
        self.popen.side_effect = [mock.Mock(), RuntimeError('stop')]
        self.assertRaises(RuntimeError, vpmem_copy.copy_namespaces, [pair],
                          host='dest', instance=uuids.instance)
        transport = _transport(host='dest')
        self.assertIsNone(vpmem_copy._zero_gaps([pair], transport, None))
        self._assert_for_the_instance(
            self._calls(), [('remote', 'receive', ['ns_1']),
                            ('local', 'send', ['ns_0']),
                            ('remote', 'zero', ['ns_1'])])

    def test_precopy_for_the_instance(self):
        self.popen.side_effect = [mock.Mock(), RuntimeError('stop')]
        self.assertRaises(RuntimeError, vpmem_copy.precopy_namespaces,
                          [self.pair], 'blake2b', host='dest',
                          instance=uuids.instance)
        calls = self._calls()
        self._assert_for_the_instance(
            calls, [('remote', 'receive', ['ns_1']),
                    ('local', 'send', ['ns_0'])])
        self.assertIn('--precopy', calls[0][1])
        self.assertIn('--live', calls[1][1])

    def _public_calls(self, pairs, instance):
        """Each public function of the engine, called as the driver does."""
        return {
            'check': lambda: vpmem_copy.check_namespaces(
                pairs, host='dest', instance=instance),
            'zero': lambda: vpmem_copy.zero_namespaces(
                [p.dest for p in pairs], host='dest', instance=instance),
            'prepare': lambda: vpmem_copy.prepare_copy(
                pairs, host='dest', instance=instance),
            'copy': lambda: vpmem_copy.copy_namespaces(
                pairs, host='dest', instance=instance),
            'precopy': lambda: vpmem_copy.precopy_namespaces(
                pairs, 'blake2b', host='dest', instance=instance),
        }

    def test_non_uuid_instance_refused_before_running_anything(self):
        for instance in BAD_INSTANCES:
            for call in self._public_calls([self.pair], instance).values():
                self.assertRaises(ValueError, call)
        self.popen.assert_not_called()
        self.run_helper.assert_not_called()

    def test_the_instance_must_be_given(self):
        pairs = [self.pair]
        for func, args in ((vpmem_copy.check_namespaces, [pairs]),
                           (vpmem_copy.zero_namespaces, [['ns_1']]),
                           (vpmem_copy.prepare_copy, [pairs]),
                           (vpmem_copy.copy_namespaces, [pairs]),
                           (vpmem_copy.precopy_namespaces,
                            [pairs, 'blake2b'])):
            self.assertRaises(TypeError, func, *args, host='dest')
        self.popen.assert_not_called()
        self.run_helper.assert_not_called()

    def test_bad_namespace_names_refused_before_running_anything(self):
        for bad in BAD_NAMES:
            for pair in (self.pair._replace(source=bad),
                         self.pair._replace(dest=bad)):
                for name, call in self._public_calls(
                        [pair], uuids.instance).items():
                    if name == 'zero' and pair.dest != bad:
                        continue
                    exc = self.assertRaises(ValueError, call)
                    self.assertIn('Invalid namespace name', str(exc))
        self.popen.assert_not_called()
        self.run_helper.assert_not_called()

    def test_a_refusing_helper_fails_the_check(self):
        self.run_helper.return_value = (3, b'', 'this host did not give '
                                        'namespace ns_1 to instance')
        exc = self.assertRaises(
            exception.VPMEMCopyCheckFailed, vpmem_copy.check_namespaces,
            [self.pair], host='dest', instance=uuids.instance)
        self.assertIn('did not give namespace ns_1', str(exc))


class StreamOutputTestCase(test.NoDBTestCase):
    """The source does not trust what the destination's receiver prints."""

    def setUp(self):
        super().setUp()
        pair = vpmem_copy.NamespacePair('ns_0', 'ns_1', 4 * MiB)
        self.stream = vpmem_copy._Stream(pair, 0, 0, 4 * MiB)
        self.stream.recording = vpmem_copy.Record('blake2b', MiB)
        # What start() sets for 1 MiB chunks: 4 chunks in the range.
        self.stream.max_line = (vpmem_copy._LINE_SIZE +
                                4 * vpmem_copy._LINE_SIZE_PER_CHUNK)

    def test_progress_and_chunks_in_the_range_are_taken(self):
        digest = bytes(range(32))
        self.assertEqual(MiB, self.stream.feed(
            b'chunk %d %d %s\nprogress %d\n' % (
                MiB, MiB, digest.hex().encode(), MiB)))
        self.assertIsNone(self.stream.error)
        self.assertEqual(
            {('ns_0', 'ns_1', MiB, MiB, MiB): (digest, b'')},
            self.stream.recording.chunks)

    def test_a_line_longer_than_any_receiver_prints_fails_the_stream(self):
        # No newline: the line is kept until it is too long.
        self.stream.feed(b'done {"stale": [' + b'1' * 60000)
        self.assertIsNone(self.stream.error)
        self.stream.feed(b'2' * 10000)
        self.assertIn('receive printed a line of more than', self.stream.error)
        self.assertEqual(b'', self.stream.buf)

    def test_chunks_outside_the_range_fail_the_stream(self):
        digest = bytes(32).hex().encode()
        for line in (b'chunk %d %d %s\n' % (4 * MiB, MiB, digest),
                     b'chunk %d %d %s\n' % (MiB + 1, MiB, digest),
                     b'chunk 0 %d %s\n' % (2 * MiB, digest),
                     b'chunk -%d %d %s\n' % (MiB, MiB, digest)):
            self.stream.error = None
            self.stream.feed(line)
            self.assertIn('outside its range', self.stream.error, line)
        self.assertEqual({}, self.stream.recording.chunks)

    def test_start_bounds_the_line_by_the_chunks_of_the_range(self):
        transport = _transport()
        with mock.patch('subprocess.Popen'):
            self.stream.start(transport, 'none', 0, MiB // 2, None)
        self.assertEqual(vpmem_copy._LINE_SIZE +
                         8 * vpmem_copy._LINE_SIZE_PER_CHUNK,
                         self.stream.max_line)
