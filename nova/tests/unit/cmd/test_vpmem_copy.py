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

"""Tests for the nova-vpmem-copy root helper, run in-process on files."""

import io
import os
import stat
import subprocess
from unittest import mock

import fixtures
from oslo_serialization import jsonutils

from nova.cmd import vpmem_copy as helper
from nova import test

MiB = 1024 * 1024
CHUNK = 256 * 1024


class VPMEMCopyHelperTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.EnvironmentVariable('SUDO_UID'))
        self.size = 2 * MiB
        # Source: random, then a zero hole, then random.
        data = bytearray(os.urandom(self.size))
        data[MiB // 2:MiB + MiB // 4] = bytes(MiB // 2 + MiB // 4)
        self.data = bytes(data)
        self.src = self._file('src', self.data)
        self.dst = self._file('dst', os.urandom(self.size))
        self._allow([self.src, self.dst])

    def _file(self, name, content):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb') as f:
            f.write(content)
        return path

    def _allow(self, paths, mode=0o600):
        listing = os.path.join(self.tmp, 'namespaces.json')
        with open(listing, 'w') as f:
            f.write(jsonutils.dumps(
                [{'path': p, 'size': self.size} for p in paths]))
        os.chmod(listing, mode)
        self.useFixture(fixtures.EnvironmentVariable(
            helper.NAMESPACES_ENV, listing))

    def _read(self, path):
        with open(path, 'rb') as f:
            return f.read()

    def _send(self, offset=0, length=None, digest='blake2b', chunk=CHUNK):
        length = self.size - offset if length is None else length
        with open(os.path.join(self.tmp, 'stream'), 'w+b') as out:
            helper.send(self.src, offset, length, chunk, digest, 0,
                        out_fd=out.fileno())
            out.seek(0)
            return out.read()

    def _receive(self, stream, offset=0, length=None):
        length = self.size - offset if length is None else length
        path = self._file('stream-in', stream)
        out = io.StringIO()
        with open(path, 'rb') as f:
            helper.receive(self.dst, offset, length, in_fd=f.fileno(),
                           out=out)
        return out.getvalue()

    def _assert_fails(self, code, stream, offset=0, length=None):
        exc = self.assertRaises(helper.HelperError, self._receive, stream,
                                offset, length)
        self.assertEqual(code, exc.code)
        return str(exc)

    def test_roundtrip_copies_exactly_and_fills_dirty_zero_chunks(self):
        out = self._receive(self._send())
        self.assertEqual(self.data, self._read(self.dst))
        stats = jsonutils.loads(out.splitlines()[-1].split(' ', 1)[1])
        # Zero chunks are sent as records only, and were zero-filled on the
        # destination because it was dirty.
        self.assertEqual(3 * CHUNK, stats['zero_bytes'])
        self.assertEqual(3 * CHUNK, stats['zero_filled_bytes'])
        self.assertEqual(self.size - 3 * CHUNK, stats['data_bytes'])

    def test_zero_chunks_are_not_on_the_wire(self):
        stream = self._send()
        self.assertLess(len(stream), self.size - 3 * CHUNK + 4096)

    def test_roundtrip_of_a_range_leaves_the_rest_alone(self):
        before = self._read(self.dst)
        self._receive(self._send(offset=CHUNK, length=2 * CHUNK),
                      offset=CHUNK, length=2 * CHUNK)
        after = self._read(self.dst)
        self.assertEqual(self.data[CHUNK:3 * CHUNK], after[CHUNK:3 * CHUNK])
        self.assertEqual(before[:CHUNK], after[:CHUNK])
        self.assertEqual(before[3 * CHUNK:], after[3 * CHUNK:])

    def test_range_lands_at_another_offset(self):
        # A guest's label area moves to the end of a larger namespace.
        before = self._read(self.dst)
        stream = self._send(offset=0, length=CHUNK)
        path = self._file('stream-in', stream)
        with open(path, 'rb') as f:
            helper.receive(self.dst, 2 * CHUNK, CHUNK, in_fd=f.fileno(),
                           out=io.StringIO(), source_offset=0)
        after = self._read(self.dst)
        self.assertEqual(self.data[:CHUNK], after[2 * CHUNK:3 * CHUNK])
        self.assertEqual(before[:2 * CHUNK], after[:2 * CHUNK])
        self.assertEqual(before[3 * CHUNK:], after[3 * CHUNK:])

    def test_range_from_another_source_offset_fails(self):
        stream = self._send(offset=CHUNK, length=CHUNK)
        path = self._file('stream-in', stream)
        with open(path, 'rb') as f:
            exc = self.assertRaises(
                helper.HelperError, helper.receive, self.dst, 2 * CHUNK,
                CHUNK, in_fd=f.fileno(), out=io.StringIO(), source_offset=0)
        self.assertEqual(helper.EXIT_PROTOCOL, exc.code)

    def test_every_available_digest_roundtrips(self):
        for name in helper.available_digests() + ['none']:
            self._file('dst', os.urandom(self.size))
            self._receive(self._send(digest=name))
            self.assertEqual(self.data, self._read(self.dst), name)

    def test_blake2b_is_always_available(self):
        self.assertIn('blake2b', helper.available_digests())

    def test_truncated_stream_fails(self):
        stream = self._send()
        for cut in (3, len(stream) // 2, len(stream) - 1):
            msg = self._assert_fails(helper.EXIT_TRUNCATED, stream[:cut])
            self.assertIn('truncated', msg)

    def test_stream_without_end_record_fails(self):
        stream = self._send()
        msg = self._assert_fails(helper.EXIT_TRUNCATED,
                                 stream[:-helper.RECORD_HDR.size])
        self.assertIn('no END record', msg)

    def test_corrupted_byte_fails(self):
        stream = bytearray(self._send())
        # The first record is DATA; flip a byte of its payload.
        first = len(helper.MAGIC) + helper.STREAM_HDR.size
        stream[first + helper.RECORD_HDR.size + 1000] ^= 0x01
        msg = self._assert_fails(helper.EXIT_MISMATCH, bytes(stream))
        self.assertIn('does not match', msg)

    def test_corruption_is_not_detected_without_digest(self):
        stream = bytearray(self._send(digest='none'))
        first = len(helper.MAGIC) + helper.STREAM_HDR.size
        stream[first + helper.RECORD_HDR.size + 1000] ^= 0x01
        self._receive(bytes(stream))
        self.assertNotEqual(self.data, self._read(self.dst))

    def test_wrong_range_fails(self):
        stream = self._send(offset=0, length=CHUNK)
        msg = self._assert_fails(helper.EXIT_PROTOCOL, stream, offset=CHUNK,
                                 length=CHUNK)
        self.assertIn('expected', msg)

    def test_end_record_with_wrong_counts_fails(self):
        stream = self._send()
        end = helper.RECORD_HDR.pack(helper.END, self.size, 1, b'')
        self._assert_fails(helper.EXIT_PROTOCOL,
                           stream[:-helper.RECORD_HDR.size] + end)

    def test_not_a_stream_fails(self):
        self._assert_fails(helper.EXIT_PROTOCOL, b'x' * 64)

    def test_unknown_digest_fails(self):
        stream = bytearray(self._send())
        stream[len(helper.MAGIC):len(helper.MAGIC) + 16] = b'md5'.ljust(
            16, b'\0')
        msg = self._assert_fails(helper.EXIT_PROTOCOL, bytes(stream))
        self.assertIn('not available', msg)

    def test_zero(self):
        out = io.StringIO()
        helper.zero(self.dst, out=out)
        self.assertEqual(bytes(self.size), self._read(self.dst))
        self.assertIn('"zero_filled_bytes": %d' % self.size, out.getvalue())

    def test_zero_a_range_leaves_the_rest_alone(self):
        before = self._read(self.dst)
        helper.zero(self.dst, out=io.StringIO(), offset=CHUNK,
                    length=2 * CHUNK)
        after = self._read(self.dst)
        self.assertEqual(bytes(2 * CHUNK), after[CHUNK:3 * CHUNK])
        self.assertEqual(before[:CHUNK], after[:CHUNK])
        self.assertEqual(before[3 * CHUNK:], after[3 * CHUNK:])

    def test_unknown_device_is_refused(self):
        other = self._file('other', bytes(self.size))
        for call in (lambda: helper.zero(other),
                     lambda: helper.send(other, 0, CHUNK, CHUNK, 'none', 0),
                     lambda: helper.receive(other, 0, CHUNK)):
            exc = self.assertRaises(helper.HelperError, call)
            self.assertEqual(helper.EXIT_DENIED, exc.code)
        self.assertEqual(bytes(self.size), self._read(other))

    def test_symlink_to_known_device_is_refused(self):
        link = os.path.join(self.tmp, 'link')
        os.symlink(self.dst, link)
        exc = self.assertRaises(helper.HelperError, helper.zero, link)
        self.assertEqual(helper.EXIT_DENIED, exc.code)

    def test_device_in_use_is_refused(self):
        with open(self.dst, 'rb') as f:
            user = subprocess.Popen(['sleep', '60'], stdin=f)
        self.addCleanup(user.wait)
        self.addCleanup(user.kill)
        exc = self.assertRaises(helper.HelperError, helper.zero, self.dst)
        self.assertEqual(helper.EXIT_DENIED, exc.code)
        self.assertIn('in use by process %d' % user.pid, str(exc))

    def test_range_outside_namespace_is_refused(self):
        exc = self.assertRaises(helper.HelperError, helper.send, self.src,
                                CHUNK, self.size, CHUNK, 'none', 0)
        self.assertEqual(helper.EXIT_USAGE, exc.code)

    def test_override_file_must_not_be_writable_by_others(self):
        self._allow([self.dst], mode=0o666)
        exc = self.assertRaises(helper.HelperError, helper.zero, self.dst)
        self.assertEqual(helper.EXIT_DENIED, exc.code)

    def test_override_file_is_ignored_under_sudo(self):
        self.useFixture(fixtures.EnvironmentVariable('SUDO_UID', '1000'))
        exc = self.assertRaises(helper.HelperError, helper.zero, self.dst)
        self.assertEqual(helper.EXIT_DENIED, exc.code)
        self.assertIn('sudo', str(exc))

    @mock.patch('subprocess.run')
    def test_namespaces_from_ndctl(self, mock_run):
        self.useFixture(fixtures.EnvironmentVariable(helper.NAMESPACES_ENV))
        mock_run.return_value = subprocess.CompletedProcess([], 0, jsonutils.
            dumps([
                {'dev': 'namespace0.0', 'mode': 'devdax', 'size': 4225761280,
                 'daxregion': {'id': 0, 'size': 4225761280, 'align': 2097152,
                               'devices': [{'chardev': 'dax0.0',
                                            'size': 4225761280}]},
                 'name': 'ns0'},
                # Older ndctl: chardev and align at the top level.
                {'dev': 'namespace1.0', 'mode': 'devdax', 'size': 1073741824,
                 'chardev': 'dax1.0', 'align': 1073741824},
                {'dev': 'namespace2.0', 'mode': 'fsdax', 'size': 1},
            ]).encode())
        self.assertEqual(
            {'/dev/dax0.0': {'size': 4225761280, 'align': 2097152},
             '/dev/dax1.0': {'size': 1073741824, 'align': 1073741824}},
            helper.known_namespaces())
        mock_run.assert_called_once_with(
            ['ndctl', 'list', '-X'], check=True, capture_output=True,
            timeout=60)

    def test_device_dax_is_persisted_with_libpmem(self):
        persist = mock.Mock()
        real_fstat = os.fstat

        def fstat(fd):
            # Make the destination look like a character device.
            st = list(real_fstat(fd))
            st[0] = stat.S_IFCHR | 0o600
            return os.stat_result(st)

        with mock.patch.object(helper, '_libpmem_persist',
                               return_value=persist), \
                mock.patch.object(helper.os, 'fstat', side_effect=fstat):
            dev = helper._Mapping(self.dst, 0, self.size, MiB, True)
            dev.persist()
            dev.close()
        persist.assert_called_once_with(mock.ANY, mock.ANY)
        self.assertEqual(self.size, persist.call_args[0][1].value)

    def test_main_reports_errors_with_exit_code(self):
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        other = self._file('other', bytes(16))
        self.assertEqual(helper.EXIT_DENIED,
                         helper.main(['zero', '--device', other]))
        stderr.seek(0)
        self.assertIn('not a vPMEM namespace', stderr.read())
