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

from nova import test
from nova.virt.libvirt import vpmem_copy

MiB = 1024 * 1024


class TransportTestCase(test.NoDBTestCase):

    def test_local_argv(self):
        t = vpmem_copy._Transport(None, ['nova-vpmem-copy'], ['sudo', '-n'],
                                  'aes128-gcm@openssh.com', [])
        self.assertEqual(
            ['sudo', '-n', 'nova-vpmem-copy', 'zero', '--device', '/dev/d'],
            t.remote('zero', '--device', '/dev/d'))

    def test_remote_argv_is_quoted_with_host_key_checking_on(self):
        t = vpmem_copy._Transport('dest.example.org', ['nova-vpmem-copy'],
                                  ['sudo', '-n'], 'aes256-gcm@openssh.com',
                                  ['-F', '/etc/cfg'])
        argv = t.remote('receive', '--device', '/dev/dax0.1', '--length', 5)
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
            ['sudo', '-n', 'nova-vpmem-copy', 'receive', '--device',
             '/dev/dax0.1', '--length', '5'], shlex.split(argv[-1]))
        self.assertNotIn('-C', argv)

    def test_pinned_known_hosts_file(self):
        t = vpmem_copy._Transport('dest', ['helper'], [], 'aes128-ctr', [],
                                  known_hosts='/etc/nova/known_hosts')
        argv = t.remote('zero', '--device', '/dev/dax0.1')
        self.assertIn('UserKnownHostsFile=/etc/nova/known_hosts', argv)
        self.assertIn('GlobalKnownHostsFile=/dev/null', argv)
        self.assertRaises(ValueError, vpmem_copy._Transport, 'dest', [], [],
                          'aes128-ctr', [], known_hosts='/a b')

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
        t = vpmem_copy._Transport('h', ['/opt/my helper'], [], 'aes128-ctr',
                                  [])
        argv = t.remote('zero', '--device', '/dev/x; rm -rf /')
        self.assertEqual(['/opt/my helper', 'zero', '--device',
                          '/dev/x; rm -rf /'], shlex.split(argv[-1]))

    def test_bad_host_and_cipher_refused(self):
        for host in ('-oProxyCommand=x', 'a b', 'h;id', ''):
            if host:
                self.assertRaises(ValueError, vpmem_copy._Transport, host,
                                  [], [], 'aes128-ctr', [])
        self.assertRaises(ValueError, vpmem_copy._Transport, 'h', [], [],
                          '-oProxyCommand=x', [])
        # IPv6 literals are fine.
        vpmem_copy._Transport('fe80::1%eth0', [], [], 'aes128-ctr', [])


class CopyNamespacesTestCase(test.NoDBTestCase):

    def test_bad_paths_and_sizes_refused_before_running_anything(self):
        bad = [vpmem_copy.NamespacePair('dev/dax0.0', '/dev/dax0.1', 1),
               vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/../etc/x', 1),
               vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/dax 1', 1),
               vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/dax0.1', 0)]
        with mock.patch('subprocess.Popen') as popen:
            for pair in bad:
                self.assertRaises(ValueError, vpmem_copy.copy_namespaces,
                                  [pair], host='h')
        popen.assert_not_called()

    def test_bad_label_and_destination_sizes_refused(self):
        for pair in (
                vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/dax1.0', MiB,
                                         2 * MiB, MiB),
                vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/dax1.0',
                                         2 * MiB, MiB, 0),
                vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/dax1.0',
                                         2 * MiB, 2 * MiB, -1)):
            self.assertRaises(ValueError, vpmem_copy.copy_namespaces,
                              [pair])

    def test_same_size_is_one_segment(self):
        pair = vpmem_copy.NamespacePair('/a', '/b', 8 * MiB, 8 * MiB, MiB)
        self.assertEqual([(0, 0, 8 * MiB)], pair.segments())
        self.assertIsNone(pair.gap())

    def test_larger_destination_keeps_the_label_area_at_the_end(self):
        pair = vpmem_copy.NamespacePair('/a', '/b', 8 * MiB, 12 * MiB, MiB)
        self.assertEqual([(0, 0, 7 * MiB), (7 * MiB, 11 * MiB, MiB)],
                         pair.segments())
        # Between the data and the label area.
        self.assertEqual((7 * MiB, 4 * MiB), pair.gap())

    def test_larger_destination_without_label_area(self):
        pair = vpmem_copy.NamespacePair('/a', '/b', 8 * MiB, 12 * MiB)
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
                          [vpmem_copy.NamespacePair('/dev/dax0.0',
                                                    '/dev/dax1.0', 4 * MiB)],
                          host='dest', streams=2, verify=False,
                          bandwidth=10 * MiB, helper=['helper'],
                          root_helper=['sudo', '-n'])
        receive = mock_popen.call_args_list[0][0][0]
        self.assertEqual(['ssh', '-T'], receive[:2])
        self.assertEqual('sudo -n helper receive --device /dev/dax1.0 '
                         '--offset 0 --length %d' % (2 * MiB), receive[-1])
        send = mock_popen.call_args_list[1][0][0]
        self.assertEqual(
            ['sudo', '-n', 'helper', 'send', '--device', '/dev/dax0.0',
             '--offset', '0', '--length', str(2 * MiB), '--chunk-size',
             str(vpmem_copy.CHUNK_SIZE), '--rate', str(5 * MiB),
             '--digest', 'none'], send)


class StreamOutputTestCase(test.NoDBTestCase):
    """The source does not trust what the destination's receiver prints."""

    def setUp(self):
        super().setUp()
        pair = vpmem_copy.NamespacePair('/dev/dax0.0', '/dev/dax1.0',
                                        4 * MiB)
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
            {('/dev/dax0.0', '/dev/dax1.0', MiB, MiB, MiB): (digest, b'')},
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
        transport = vpmem_copy._Transport(None, ['helper'], [], 'aes128-ctr',
                                          [])
        with mock.patch('subprocess.Popen'):
            self.stream.start(transport, 'none', 0, MiB // 2, None)
        self.assertEqual(vpmem_copy._LINE_SIZE +
                         8 * vpmem_copy._LINE_SIZE_PER_CHUNK,
                         self.stream.max_line)
