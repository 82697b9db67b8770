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

import configparser
import io
import itertools
import os
import pwd
import socket
import stat
import struct
import sys
from unittest import mock

import fixtures
from oslo_serialization import jsonutils
from oslo_utils.fixture import uuidsentinel as uuids

import nova
from nova.cmd import vpmem_copy as helper
from nova.conf import netconf
from nova.conf import paths
from nova import test
from nova.virt import vpmem_stream as wire

MiB = 1024 * 1024
CHUNK = 256 * 1024
# The names of the namespaces of HelperTestBase, whose devices are the
# files 'src' and 'dst': the helper is given names, never paths.
SOURCE_NS = 'ns0'
DEST_NS = 'ns1'


class HelperTestBase(test.NoDBTestCase):
    """The helper's functions in this process, on files it is told to allow.

    The helper acts for instance ``uuids.instance``; this host's owners
    file (a real file, read by the helper) records SOURCE_NS as the
    instance's and DEST_NS as given to it for its move here.

    Shared with the functional tests that add other processes.
    """

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.size = 2 * MiB
        # Source: random, then a zero hole, then random.
        data = bytearray(os.urandom(self.size))
        data[MiB // 2:MiB + MiB // 4] = bytes(MiB // 2 + MiB // 4)
        self.data = bytes(data)
        self.src = self._file('src', self.data)
        self.dst = self._file('dst', os.urandom(self.size))
        self._allow({SOURCE_NS: self.src, DEST_NS: self.dst})
        # main() updates the module's configuration: restored after each
        # test. No configuration file of this machine is read.
        self.useFixture(fixtures.MockPatchObject(
            helper, '_config', {'files': (), 'directories': (),
                                'instance': uuids.instance, 'run_as': None}))
        # What a run read: each _give() starts a new one.
        self.useFixture(fixtures.MockPatchObject(helper, '_run', {}))
        self.config = configparser.ConfigParser()
        self.useFixture(fixtures.MockPatchObject(
            helper, '_nova_config', return_value=self.config))
        self.owners_path = os.path.join(self.tmp, 'vpmem-owners.json')
        self.mock_owners_path = self.useFixture(fixtures.MockPatchObject(
            helper, '_owners_path', return_value=self.owners_path)).mock
        self._give({SOURCE_NS: uuids.instance, DEST_NS: uuids.instance},
                   {DEST_NS: uuids.instance})

    def _give(self, owners, incoming=None):
        """Write this host's owners file, as nova-compute does."""
        data = {'owners': owners}
        if incoming is not None:
            data['incoming'] = incoming
        self._write_owners(jsonutils.dumps(data).encode())

    def _write_owners(self, text):
        """Write the owners file; the next call of the helper reads it."""
        self._file(os.path.basename(self.owners_path), text)
        helper._run.clear()

    def _file(self, name, content):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb') as f:
            f.write(content)
        return path

    def _allow(self, paths):
        """Make regular files the host's namespaces (there is no PMEM).

        :param paths: {namespace name: path of its stand-in file}
        """
        self.useFixture(fixtures.MockPatchObject(
            helper, 'known_namespaces', return_value={
                name: {'path': path, 'size': self.size, 'align': 4096}
                for name, path in paths.items()}))

    def _read(self, path):
        with open(path, 'rb') as f:
            return f.read()

    def _send(self, offset=0, length=None, digest='blake2b', chunk=CHUNK,
              record=None, **kwargs):
        length = self.size - offset if length is None else length
        with open(os.path.join(self.tmp, 'stream'), 'w+b') as out:
            record_fd = None
            if record is not None:
                record_fd = os.open(self._file('record', record),
                                    os.O_RDONLY)
                self.addCleanup(os.close, record_fd)
            helper.send(SOURCE_NS, offset, length, chunk, digest, 0,
                        out_fd=out.fileno(), record_fd=record_fd, **kwargs)
            out.seek(0)
            return out.read()

    def _receive(self, stream, offset=0, length=None, **kwargs):
        length = self.size - offset if length is None else length
        path = self._file('stream-in', stream)
        out = io.StringIO()
        with open(path, 'rb') as f:
            helper.receive(DEST_NS, offset, length, in_fd=f.fileno(),
                           out=out, **kwargs)
        return out.getvalue()

    def _kinds(self, stream):
        """The record kinds of a stream, in order."""
        kinds = []
        pos = len(wire.MAGIC) + wire.STREAM_HDR.size
        while pos < len(stream):
            kind, _off, length, _digest = wire.RECORD_HDR.unpack_from(
                stream, pos)
            kinds.append(kind)
            pos += wire.RECORD_HDR.size + (length if kind == wire.DATA
                                             else 0)
        return kinds

    def _record(self, digests, digest='blake2b', offset=0, length=None,
                chunk=CHUNK, fast='xxh3_64'):
        """A record of (digest, fast digest) or None per chunk."""
        length = self.size - offset if length is None else length
        return (wire.RECORD_MAGIC + wire.STREAM_HDR.pack(
            digest.encode(), fast.encode(), offset, length, chunk) +
            b''.join(d[0] + d[1].ljust(wire.DIGEST_SIZE, b'\0') if d
                     else 2 * wire.NO_DIGEST for d in digests))

    def _precopy(self):
        """Send and receive a first pass; return the digests it printed."""
        out = self._receive(self._send(live=True), precopy=True)
        digests = [None] * (self.size // CHUNK)
        for line in out.splitlines():
            word, *rest = line.split()
            if word == 'chunk':
                self.assertEqual('xxh3_64', rest[3])
                digests[int(rest[0]) // CHUNK] = (bytes.fromhex(rest[2]),
                                                   bytes.fromhex(rest[4]))
        return digests

    def _assert_fails(self, code, stream, offset=0, length=None):
        exc = self.assertRaises(wire.HelperError, self._receive, stream,
                                offset, length)
        self.assertEqual(code, exc.code)
        return str(exc)


class VPMEMCopyHelperTestCase(HelperTestBase):

    def test_roundtrip_copies_exactly_and_fills_dirty_zero_chunks(self):
        out = self._receive(self._send())
        self.assertEqual(self.data, self._read(self.dst))
        stats = jsonutils.loads(out.splitlines()[-1].split(' ', 1)[1])
        # Zero chunks are sent as records only, and were zero-filled on the
        # destination because it was dirty.
        self.assertEqual(3 * CHUNK, stats['zero_bytes'])
        self.assertEqual(3 * CHUNK, stats['zero_filled_bytes'])
        self.assertEqual(self.size - 3 * CHUNK, stats['data_bytes'])

    def test_receive_reports_progress_at_least_every_second(self):
        # A receiver whose caller died fails on its next progress line
        # instead of copying on: one is due after each chunk here.
        self.useFixture(fixtures.MockPatchObject(
            wire, 'PROGRESS_SECONDS', 0))
        out = self._receive(self._send())
        progress = [int(line.split()[1]) for line in out.splitlines()
                    if line.startswith('progress ')]
        self.assertEqual(list(range(CHUNK, self.size + 1, CHUNK)), progress)

    def test_receive_reports_progress_by_size(self):
        # Below PROGRESS_EVERY bytes, and with no second due, nothing.
        self.useFixture(fixtures.MockPatchObject(
            wire, 'PROGRESS_SECONDS', 3600))
        out = self._receive(self._send())
        self.assertFalse([line for line in out.splitlines()
                          if line.startswith('progress ')])

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
            helper.receive(DEST_NS, 2 * CHUNK, CHUNK, in_fd=f.fileno(),
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
                wire.HelperError, helper.receive, DEST_NS, 2 * CHUNK,
                CHUNK, in_fd=f.fileno(), out=io.StringIO(), source_offset=0)
        self.assertEqual(wire.EXIT_PROTOCOL, exc.code)

    def test_every_available_digest_roundtrips(self):
        for name in wire.available_digests() + ['none']:
            self._file('dst', os.urandom(self.size))
            self._receive(self._send(digest=name))
            self.assertEqual(self.data, self._read(self.dst), name)

    def test_blake2b_is_always_available(self):
        self.assertIn('blake2b', wire.available_digests())

    def test_truncated_stream_fails(self):
        stream = self._send()
        for cut in (3, len(stream) // 2, len(stream) - 1):
            msg = self._assert_fails(wire.EXIT_TRUNCATED, stream[:cut])
            self.assertIn('truncated', msg)

    def test_stream_without_end_record_fails(self):
        stream = self._send()
        msg = self._assert_fails(wire.EXIT_TRUNCATED,
                                 stream[:-wire.RECORD_HDR.size])
        self.assertIn('no END record', msg)

    def test_corrupted_byte_fails(self):
        stream = bytearray(self._send())
        # The first record is DATA; flip a byte of its payload.
        first = len(wire.MAGIC) + wire.STREAM_HDR.size
        stream[first + wire.RECORD_HDR.size + 1000] ^= 0x01
        msg = self._assert_fails(wire.EXIT_MISMATCH, bytes(stream))
        self.assertIn('does not match', msg)

    def test_corruption_is_not_detected_without_digest(self):
        stream = bytearray(self._send(digest='none'))
        first = len(wire.MAGIC) + wire.STREAM_HDR.size
        stream[first + wire.RECORD_HDR.size + 1000] ^= 0x01
        self._receive(bytes(stream))
        self.assertNotEqual(self.data, self._read(self.dst))

    def test_wrong_range_fails(self):
        stream = self._send(offset=0, length=CHUNK)
        msg = self._assert_fails(wire.EXIT_PROTOCOL, stream, offset=CHUNK,
                                 length=CHUNK)
        self.assertIn('expected', msg)

    def test_end_record_with_wrong_counts_fails(self):
        stream = self._send()
        end = wire.RECORD_HDR.pack(wire.END, self.size, 1, b'')
        self._assert_fails(wire.EXIT_PROTOCOL,
                           stream[:-wire.RECORD_HDR.size] + end)

    def test_not_a_stream_fails(self):
        self._assert_fails(wire.EXIT_PROTOCOL, b'x' * 64)

    def test_unknown_digest_fails(self):
        stream = bytearray(self._send())
        stream[len(wire.MAGIC):len(wire.MAGIC) + 16] = b'md5'.ljust(
            16, b'\0')
        msg = self._assert_fails(wire.EXIT_PROTOCOL, bytes(stream))
        self.assertIn('not available', msg)

    def test_zero(self):
        out = io.StringIO()
        helper.zero(DEST_NS, out=out)
        self.assertEqual(bytes(self.size), self._read(self.dst))
        self.assertIn('"zero_filled_bytes": %d' % self.size, out.getvalue())

    def test_zero_a_range_leaves_the_rest_alone(self):
        before = self._read(self.dst)
        helper.zero(DEST_NS, out=io.StringIO(), offset=CHUNK,
                    length=2 * CHUNK)
        after = self._read(self.dst)
        self.assertEqual(bytes(2 * CHUNK), after[CHUNK:3 * CHUNK])
        self.assertEqual(before[:CHUNK], after[:CHUNK])
        self.assertEqual(before[3 * CHUNK:], after[3 * CHUNK:])

    def test_unknown_namespace_is_refused(self):
        # A name that this host's records give to the instance, but that
        # is not one of its namespaces; the path of a namespace's device,
        # which is no namespace name.
        self._give({'ns9': uuids.instance, DEST_NS: uuids.instance},
                   {'ns9': uuids.instance, DEST_NS: uuids.instance})
        content = os.urandom(self.size)
        other = self._file('other', content)
        before = self._read(self.dst)
        for name in ('ns9', other, self.dst):
            for call in (lambda: helper.zero(name),
                         lambda: helper.send(name, 0, CHUNK, CHUNK, 'none',
                                             0),
                         lambda: helper.receive(name, 0, CHUNK),
                         lambda: helper.check([name], [1])):
                exc = self.assertRaises(wire.HelperError, call)
                self.assertEqual(wire.EXIT_DENIED, exc.code)
                self.assertEqual('%s is not a vPMEM namespace of this host'
                                 % name, str(exc))
        self.assertEqual(content, self._read(other))
        self.assertEqual(before, self._read(self.dst))

    def test_first_pass_prints_the_digest_of_each_data_chunk(self):
        digests = self._precopy()
        self.assertEqual(self.data, self._read(self.dst))
        # Chunks 2 to 4 are zero: no data, no record.
        self.assertEqual([None] * 3, digests[2:5])
        self.assertEqual((wire.digest('blake2b', self.data[:CHUNK]),
                          wire.digest('xxh3_64', self.data[:CHUNK])[:8]),
                         digests[0])
        self.assertEqual(5, len([d for d in digests if d]))

    def test_second_pass_sends_unchanged_chunks_as_same(self):
        digests = self._precopy()
        self.data = b'x' * 10 + self.data[10:]
        self._file('src', self.data)
        # Chunks that changed are sent, and checked, with the stream's
        # fast digest; the others with the record's.
        stream = self._send(record=self._record(digests), digest='xxh3_64')
        self.assertEqual([wire.DATA] + [wire.SAME] + [wire.ZERO] * 3 +
                         [wire.SAME] * 3 + [wire.END],
                         self._kinds(stream))
        stats = jsonutils.loads(self._receive(stream).split(' ', 1)[1])
        self.assertEqual(self.data, self._read(self.dst))
        self.assertEqual(4 * CHUNK, stats['same_bytes'])
        self.assertEqual(['xxh3_64', 'blake2b'],
                         [stats['digest'], stats['same_digest']])
        self.assertEqual([], stats['stale'])

    def test_a_fast_digest_alone_never_makes_a_chunk_same(self):
        digests = self._precopy()
        # The fast digest matches, the cryptographic one does not (as with
        # a crafted xxh3 collision): sent. The fast digest differs: sent,
        # whatever the cryptographic one says.
        digests[0] = (bytes(32), digests[0][1])
        digests[1] = (digests[1][0], bytes(8))
        stream = self._send(record=self._record(digests), digest='xxh3_64')
        self.assertEqual([wire.DATA] * 2 + [wire.ZERO] * 3 +
                         [wire.SAME] * 3 + [wire.END],
                         self._kinds(stream))
        # Without a fast digest in the record, the cryptographic one
        # decides alone.
        stream = self._send(record=self._record(digests, fast=''))
        self.assertEqual([wire.DATA, wire.SAME] + [wire.ZERO] * 3 +
                         [wire.SAME] * 3 + [wire.END],
                         self._kinds(stream))

    def test_stale_record_is_reported_not_trusted(self):
        digests = self._precopy()
        with open(self.dst, 'r+b') as f:
            f.seek(CHUNK + 5)
            f.write(b'changed behind the record')
        stream = self._send(record=self._record(digests))
        stats = jsonutils.loads(self._receive(stream).split(' ', 1)[1])
        self.assertEqual([[CHUNK, CHUNK]], stats['stale'])

    def test_any_doubt_about_the_record_sends_every_chunk(self):
        digests = self._precopy()
        all_data = [wire.DATA] * 2 + [wire.ZERO] * 3 + [wire.DATA] * 3
        for record in (self._record(digests, chunk=2 * CHUNK),
                       self._record(digests, digest='xxh3_64'),
                       self._record(digests, digest='md5'),
                       self._record(digests, offset=CHUNK),
                       self._record(digests)[:wire.STREAM_HDR.size], b''):
            stream = self._send(record=record)
            self.assertEqual(all_data + [wire.END], self._kinds(stream))

    def test_a_record_that_ends_early_sends_the_other_chunks(self):
        digests = self._precopy()
        # The entries of the first two chunks and half of the third's.
        record = self._record(digests)[:-11 * wire.DIGEST_SIZE]
        stream = self._send(record=record)
        self.assertEqual([wire.SAME] * 2 + [wire.ZERO] * 3 +
                         [wire.DATA] * 3 + [wire.END],
                         self._kinds(stream))
        self._receive(stream)
        self.assertEqual(self.data, self._read(self.dst))

    def test_record_is_read_one_chunk_at_a_time(self):
        # A record header for a range of a petabyte in 4 KiB chunks: its
        # entries would take 16 TiB, but only the header is read up front.
        length = 2 ** 50
        header = self._record([], length=length, chunk=wire.MIN_CHUNK)
        entry = os.urandom(2 * wire.DIGEST_SIZE)
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        with os.fdopen(write_fd, 'wb') as w:
            w.write(header + entry)
        record = wire.read_record(read_fd, 0, length, wire.MIN_CHUNK)
        self.assertEqual('blake2b', record.digest)
        self.assertEqual((entry[:wire.DIGEST_SIZE],
                          entry[wire.DIGEST_SIZE:]), record.next_chunk())
        self.assertIsNone(record.next_chunk())
        self.assertTrue(record.truncated)

    def test_chunks_smaller_than_a_page_are_refused(self):
        stream = bytearray(self._send())
        # The chunk size is the last field of the stream header.
        struct.pack_into('<I', stream, len(wire.MAGIC) +
                         wire.STREAM_HDR.size - 4, wire.MIN_CHUNK - 1)
        msg = self._assert_fails(wire.EXIT_PROTOCOL, bytes(stream))
        self.assertIn('bad chunk size %d' % (wire.MIN_CHUNK - 1), msg)
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        self.assertEqual(wire.EXIT_USAGE, helper.main(
            ['--instance', uuids.instance, 'send', '--namespace', SOURCE_NS,
             '--length', str(self.size), '--chunk-size', '1']))
        stderr.seek(0)
        self.assertIn('the chunk size must be 4096 to', stderr.read())

    def test_same_records_need_a_cryptographic_digest(self):
        # A forged SAME record in a stream without a record's digest.
        stream = bytearray(self._send(digest='xxh3_64'))
        first = len(wire.MAGIC) + wire.STREAM_HDR.size
        stream[first] = wire.SAME
        stream[first + wire.RECORD_HDR.size:
               first + wire.RECORD_HDR.size + CHUNK] = b''
        msg = self._assert_fails(wire.EXIT_PROTOCOL, bytes(stream))
        self.assertIn('SAME record in a stream without a cryptographic '
                      'digest', msg)
        # A first pass must record a cryptographic digest.
        msg = self.assertRaises(wire.HelperError, self._receive,
                                self._send(digest='xxh3_64', live=True),
                                precopy=True)
        self.assertIn('a first pass needs a cryptographic digest', str(msg))

    def test_only_a_first_pass_may_end_early(self):
        # The clock passes stop_after after three chunks.
        clock = itertools.chain([0] * 4, itertools.repeat(10))
        with mock.patch.object(wire.time, 'monotonic',
                               side_effect=clock):
            stream = self._send(live=True, stop_after=5)
        self.assertEqual([wire.DATA, wire.DATA, wire.ZERO,
                          wire.END], self._kinds(stream))
        self._assert_fails(wire.EXIT_PROTOCOL, stream)
        stats = jsonutils.loads(self._receive(
            stream, precopy=True).splitlines()[-1].split(' ', 1)[1])
        self.assertEqual(3 * CHUNK, stats['length'])
        self.assertEqual(self.data[:3 * CHUNK],
                         self._read(self.dst)[:3 * CHUNK])

    def test_a_process_that_cannot_be_inspected_counts_as_a_user(self):
        listdir = os.listdir
        mine = '/proc/%d/fd' % os.getpid()

        def denied(path):
            if path.endswith('/fd') and path != mine:
                raise PermissionError(13, 'Permission denied')
            return listdir(path)

        self.useFixture(fixtures.MockPatch('os.listdir', denied))
        exc = self.assertRaises(wire.HelperError, helper.zero, DEST_NS)
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        self.assertIn('cannot tell whether process', str(exc))
        self.assertIn('Permission denied', str(exc))

    def test_an_ancestor_that_cannot_be_inspected_is_no_user(self):
        listdir = os.listdir
        parent = '/proc/%d/fd' % os.getppid()

        def denied(path):
            if path == parent:
                raise PermissionError(13, 'Permission denied')
            return listdir(path)

        self.useFixture(fixtures.MockPatch('os.listdir', denied))
        helper.zero(DEST_NS, out=io.StringIO())
        self.assertEqual(bytes(self.size), self._read(self.dst))

    def test_check_reports_protocol_and_digests(self):
        for names, lengths, sources in (([DEST_NS], [self.size], False),
                                        ([SOURCE_NS], [MiB], True)):
            out = io.StringIO()
            helper.check(names, lengths, out=out, sources=sources)
            self.assertEqual({'protocol': wire.PROTOCOL,
                              'digests': wire.available_digests()},
                             jsonutils.loads(out.getvalue()))

    def test_check_opens_each_device_as_the_copy_will(self):
        # Not about the owners file, which the helper opens too.
        self.useFixture(fixtures.MockPatchObject(
            helper, '_owners', return_value=(
                {SOURCE_NS: uuids.instance, DEST_NS: uuids.instance},
                {DEST_NS: uuids.instance})))
        for name, path, flags, sources in (
                (DEST_NS, self.dst, os.O_RDWR, False),
                (SOURCE_NS, self.src, os.O_RDONLY, True)):
            with mock.patch('os.open', side_effect=PermissionError(
                    13, 'Permission denied')) as mock_open:
                self.assertRaises(PermissionError, helper.check, [name],
                                  [1], sources=sources)
            mock_open.assert_called_once_with(path, flags)

    def test_check_refuses_small_or_unknown_namespaces(self):
        exc = self.assertRaises(wire.HelperError, helper.check,
                                [DEST_NS], [self.size + 1])
        self.assertIn('outside', str(exc))
        exc = self.assertRaises(wire.HelperError, helper.check,
                                [DEST_NS, 'ns9'], [1, 1])
        self.assertIn('ns9 is not a vPMEM namespace', str(exc))
        exc = self.assertRaises(wire.HelperError, helper.check,
                                [DEST_NS], [1, 1])
        self.assertIn('give one --length per --namespace', str(exc))

    def test_check_checks_as_the_senders_or_receivers_will(self):
        # The receivers write only namespaces given to the instance for its
        # move here, the senders read only the instance's.
        for names, sources in (([SOURCE_NS], False), ([DEST_NS], True)):
            self._give({SOURCE_NS: uuids.instance, DEST_NS: uuids.other},
                       {DEST_NS: uuids.other})
            exc = self.assertRaises(wire.HelperError, helper.check, names,
                                    [1], out=io.StringIO(), sources=sources)
            self.assertEqual(wire.EXIT_DENIED, exc.code)
            self.assertIn('this host did not give namespace %s to instance '
                          '%s' % (names[0], uuids.instance), str(exc))

    def test_range_outside_namespace_is_refused(self):
        exc = self.assertRaises(wire.HelperError, helper.send, SOURCE_NS,
                                CHUNK, self.size, CHUNK, 'none', 0)
        self.assertEqual(wire.EXIT_USAGE, exc.code)

    def test_device_dax_is_persisted_with_libpmem(self):
        persist = mock.Mock()
        real_fstat = os.fstat

        def fstat(fd):
            # Make the destination look like a character device.
            st = list(real_fstat(fd))
            st[0] = stat.S_IFCHR | 0o600
            return os.stat_result(st)

        fd = os.open(self.dst, os.O_RDWR)
        with mock.patch.object(wire, '_libpmem_persist',
                               return_value=persist), \
                mock.patch.object(wire.os, 'fstat', side_effect=fstat):
            dev = wire.Mapping(fd, 0, self.size, MiB, True)
            dev.persist()
            dev.close()
        persist.assert_called_once_with(mock.ANY, mock.ANY)
        self.assertEqual(self.size, persist.call_args[0][1].value)

    def test_main_reports_errors_with_exit_code(self):
        self.useFixture(fixtures.EnvironmentVariable('PATH', '/tmp/evil'))
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        self.assertEqual(wire.EXIT_DENIED, helper.main(
            ['--instance', uuids.instance, 'zero', '--namespace', 'ns9']))
        stderr.seek(0)
        self.assertIn('nova-vpmem-copy zero: ns9 is not a vPMEM namespace',
                      stderr.read())
        self.assertEqual(helper.SAFE_PATH, os.environ['PATH'])


class BindingTestCase(HelperTestBase):
    """A run acts for one instance, on the namespaces its host gave it.

    This host's owners file, which nova-compute writes, is read for real.
    """

    def _done(self, out):
        """The statistics of a receive's or zero's "done" line."""
        word, stats = out.splitlines()[-1].split(' ', 1)
        self.assertEqual('done', word)
        return jsonutils.loads(stats)

    def _assert_denied(self, call, *args, **kwargs):
        exc = self.assertRaises(wire.HelperError, call, *args, **kwargs)
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        return str(exc)

    def test_send_of_another_instances_namespace_is_refused(self):
        self._give({SOURCE_NS: uuids.other, DEST_NS: uuids.instance},
                   {SOURCE_NS: uuids.instance, DEST_NS: uuids.instance})
        msg = self._assert_denied(self._send)
        self.assertEqual('this host did not give namespace %s to instance '
                         '%s (it records %s)' % (
                             SOURCE_NS, uuids.instance, uuids.other), msg)
        # Not one byte of it went out.
        self.assertEqual(0, os.path.getsize(os.path.join(self.tmp,
                                                         'stream')))
        self._assert_denied(self._send, live=True)
        self._assert_denied(helper.check, [SOURCE_NS], [1],
                            out=io.StringIO(), sources=True)

    def test_receive_of_a_namespace_not_given_for_the_move_is_refused(self):
        stream = self._send()
        before = self._read(self.dst)
        # The instance's namespace on this host, e.g. of a shut-off server
        # whose resize is being reverted: not given to it for a move here.
        # Then another instance's, incoming or not.
        for owners, incoming in (({DEST_NS: uuids.instance}, {}),
                                 ({DEST_NS: uuids.instance},
                                  {DEST_NS: uuids.other}),
                                 ({DEST_NS: uuids.other},
                                  {DEST_NS: uuids.other}),
                                 ({DEST_NS: wire.ZEROED}, {}), ({}, {})):
            self._give(dict(owners, **{SOURCE_NS: uuids.instance}), incoming)
            msg = self._assert_denied(self._receive, stream)
            self.assertIn('this host did not give namespace %s to instance '
                          '%s for its move here' % (DEST_NS, uuids.instance),
                          msg)
            self._assert_denied(helper.check, [DEST_NS], [1],
                                out=io.StringIO())
        self.assertEqual(before, self._read(self.dst))

    def test_receive_writes_a_namespace_given_for_the_move(self):
        # As nova-compute records it for an instance moving here.
        self._give({SOURCE_NS: uuids.instance, DEST_NS: uuids.instance,
                    'ns9': uuids.other},
                   {DEST_NS: uuids.instance, 'ns9': uuids.other})
        self._receive(self._send())
        self.assertEqual(self.data, self._read(self.dst))
        helper.check([DEST_NS], [self.size], out=io.StringIO())

    def test_receive_and_zero_report_the_namespace(self):
        stats = self._done(self._receive(self._send()))
        self.assertEqual(DEST_NS, stats['namespace'])
        self.assertNotIn('device', stats)
        out = io.StringIO()
        helper.zero(DEST_NS, out=out)
        self.assertEqual({'namespace': DEST_NS, 'offset': 0,
                          'length': self.size,
                          'zero_filled_bytes': self.size},
                         self._done(out.getvalue()))

    def test_zero_of_another_instances_or_an_unknown_namespace_is_refused(
            self):
        before = self._read(self.dst)
        # Another instance's, with or without a move here; one this host
        # has no record of, which may hold anything.
        for owners, incoming, records in (
                ({DEST_NS: uuids.other}, {}, uuids.other),
                ({DEST_NS: uuids.other}, {DEST_NS: uuids.instance},
                 uuids.other),
                ({}, {}, 'no owner'), ({}, {DEST_NS: uuids.instance},
                                       'no owner')):
            self._give(owners, incoming)
            msg = self._assert_denied(helper.zero, DEST_NS,
                                      out=io.StringIO(), offset=CHUNK,
                                      length=CHUNK)
            self.assertEqual('this host did not give namespace %s to '
                             'instance %s (it records %s)' % (
                                 DEST_NS, uuids.instance, records), msg)
        self.assertEqual(before, self._read(self.dst))

    def test_zero_of_the_instances_or_a_zeroed_namespace(self):
        for owner in (wire.ZEROED, uuids.instance):
            self._file('dst', os.urandom(self.size))
            self._give({DEST_NS: owner})
            helper.zero(DEST_NS, out=io.StringIO())
            self.assertEqual(bytes(self.size), self._read(self.dst), owner)

    def test_missing_owners_file_gives_nothing(self):
        stream = self._send()
        os.unlink(self.owners_path)
        helper._run.clear()
        self.assertEqual(({}, {}), helper._owners())
        before = self._read(self.dst)
        for call in (self._send, lambda: self._receive(stream),
                     lambda: helper.zero(DEST_NS, out=io.StringIO())):
            self.assertIn('(it records no owner)', self._assert_denied(call))
        self.assertEqual(before, self._read(self.dst))

    def test_legacy_owners_file_is_read_as_owners_only(self):
        # The first format: the owners mapping alone, no moves in it.
        self._write_owners(jsonutils.dumps({SOURCE_NS: uuids.instance,
                                            DEST_NS: wire.ZEROED}).encode())
        self.assertEqual(({SOURCE_NS: uuids.instance, DEST_NS: wire.ZEROED},
                          {}), helper._owners())
        stream = self._send()
        self._assert_denied(self._receive, stream)
        helper.zero(DEST_NS, out=io.StringIO())
        self.assertEqual(bytes(self.size), self._read(self.dst))

    def _assert_owners_file_refused(self, expected):
        """Nothing is read, written or zeroed beside a bad owners file."""
        before = self._read(self.dst)
        for call in (self._send, lambda: helper.zero(DEST_NS),
                     lambda: helper.check([DEST_NS], [1])):
            msg = self._assert_denied(call)
            self.assertIn(self.owners_path, msg)
            self.assertIn(expected, msg)
        self.assertEqual(before, self._read(self.dst))
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        self.assertEqual(wire.EXIT_DENIED, helper.main(
            ['--instance', uuids.instance, 'zero', '--namespace', DEST_NS]))
        self.assertEqual(before, self._read(self.dst))

    def test_owners_file_that_is_a_symlink_is_refused(self):
        # To a file that gives the namespaces to the instance.
        real = self._file('real-owners.json', open(self.owners_path,
                                                   'rb').read())
        os.unlink(self.owners_path)
        os.symlink(real, self.owners_path)
        self._assert_owners_file_refused(self.owners_path)

    def test_owners_file_that_is_a_fifo_is_refused(self):
        # Opened without blocking for a writer that never comes.
        os.unlink(self.owners_path)
        os.mkfifo(self.owners_path)
        self._assert_owners_file_refused('is not a regular file')

    def test_owners_file_that_is_a_directory_is_refused(self):
        os.unlink(self.owners_path)
        os.mkdir(self.owners_path)
        self._assert_owners_file_refused(self.owners_path)

    def test_owners_file_larger_than_its_limit_is_refused(self):
        text = jsonutils.dumps({'owners': {SOURCE_NS: uuids.instance,
                                           DEST_NS: uuids.instance},
                                'incoming': {DEST_NS: uuids.instance}})
        # Valid JSON, padded to the limit: read.
        self._write_owners(text.ljust(wire.MAX_OWNERS_FILE_SIZE).encode())
        self._receive(self._send())
        # One byte more: refused.
        self._write_owners(
            text.ljust(wire.MAX_OWNERS_FILE_SIZE + 1).encode())
        self._assert_owners_file_refused(
            'is not an owners file: larger than %d bytes' %
            wire.MAX_OWNERS_FILE_SIZE)

    def test_owners_file_that_is_not_an_owners_file_is_refused(self):
        for text in (b'', b'not json', b'\xff\xfe', b'[]', b'"ns0"',
                     b'{"owners": []}', b'{"owners": null}',
                     b'{"owners": {"ns0": 1}}',
                     b'{"owners": {}, "incoming": {"ns1": null}}',
                     b'{"owners": {}, "incoming": []}', b'{"ns0": 1}'):
            self._write_owners(text)
            exc = self.assertRaises(wire.HelperError, helper._owners)
            self.assertEqual(wire.EXIT_DENIED, exc.code, text)
            self.assertIn('%s is not an owners file' % self.owners_path,
                          str(exc))
        self._assert_owners_file_refused('is not an owners file')

    def test_owners_file_of_the_configuration_is_read(self):
        self.assertEqual(({SOURCE_NS: uuids.instance,
                           DEST_NS: uuids.instance},
                          {DEST_NS: uuids.instance}), helper._owners())
        self.mock_owners_path.assert_called_once_with()
        # Once per run, however many namespaces it checks.
        helper.check([SOURCE_NS, SOURCE_NS], [self.size, self.size],
                     out=io.StringIO(), sources=True)
        self.mock_owners_path.assert_called_once_with()

    def test_main_acts_for_the_instance_it_is_given(self):
        stdout = self.useFixture(fixtures.StringStream('stdout')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stdout', stdout))
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        before = self._read(self.dst)
        self.assertEqual(wire.EXIT_DENIED, helper.main(
            ['--instance', uuids.other, 'zero', '--namespace', DEST_NS]))
        self.assertEqual(before, self._read(self.dst))
        stderr.seek(0)
        self.assertIn('nova-vpmem-copy zero: this host did not give '
                      'namespace %s to instance %s' % (DEST_NS, uuids.other),
                      stderr.read())
        self.assertEqual(0, helper.main(
            ['--instance', uuids.instance, 'zero', '--namespace', DEST_NS]))
        self.assertEqual(bytes(self.size), self._read(self.dst))

    def test_main_needs_the_uuid_of_an_instance(self):
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        before = self._read(self.dst)
        known = helper.known_namespaces
        uuid = uuids.instance
        for options in ([], ['--instance', ''], ['--instance', 'ns1'],
                        ['--instance', uuid[:-1]],
                        ['--instance', uuid.replace('-', '')],
                        ['--instance', '{%s}' % uuid],
                        ['--instance', 'urn:uuid:%s' % uuid],
                        ['--instance', ' %s' % uuid]):
            for command in (['zero', '--namespace', DEST_NS],
                            ['check', '--sources', '--namespace', SOURCE_NS,
                             '--length', '1'],
                            ['send', '--namespace', SOURCE_NS, '--length',
                             '1']):
                self.assertEqual(wire.EXIT_USAGE,
                                 helper.main(options + command),
                                 (options, command))
        known.assert_not_called()
        self.assertEqual(before, self._read(self.dst))
        stderr.seek(0)
        self.assertIn('nova-vpmem-copy zero: --instance must be the UUID of '
                      'the instance to act for, not None', stderr.read())


class PrivilegeTestCase(HelperTestBase):
    """What runs as root: the checks and the open, never the stream."""

    def _record_drop(self):
        """Mock the privilege drop; record what was open when it ran."""
        seen = {}

        def setresuid(*uids):
            seen['uids'] = uids
            # The device is open and locked by then.
            seen['locked'] = [
                fd for fd in os.listdir('/proc/self/fd')
                if os.path.realpath('/proc/self/fd/' + fd) in (
                    self.src, self.dst)]
        for name in ('setgroups', 'setresgid'):
            self.useFixture(fixtures.MockPatch('os.' + name))
        self.useFixture(fixtures.MockPatch('os.setresuid',
                                           side_effect=setresuid))
        helper._config['run_as'] = (1234, 5678)
        return seen

    def test_receive_reads_the_stream_without_privileges(self):
        stream = self._send()
        seen = self._record_drop()
        path = self._file('stream-in', stream)
        with open(path, 'rb') as f:
            real_read_header = wire.read_header

            def read_header(*args):
                # Not one byte of the stream was read as root.
                self.assertEqual(0, f.tell())
                self.assertIn('uids', seen)
                return real_read_header(*args)
            with mock.patch.object(wire, 'read_header',
                                   side_effect=read_header):
                helper.receive(DEST_NS, 0, self.size, in_fd=f.fileno(),
                               out=io.StringIO())
        self.assertEqual((1234, 1234, 1234), seen['uids'])
        self.assertEqual(1, len(seen['locked']))
        os.setgroups.assert_called_once_with([])
        os.setresgid.assert_called_once_with(5678, 5678, 5678)
        self.assertEqual(self.data, self._read(self.dst))

    def test_send_and_zero_drop_privileges_once_the_device_is_open(self):
        seen = self._record_drop()
        self._send()
        self.assertEqual((1234, 1234, 1234), seen.pop('uids'))
        self.assertEqual(1, len(seen.pop('locked')))
        helper.zero(DEST_NS, out=io.StringIO())
        self.assertEqual((1234, 1234, 1234), seen.pop('uids'))
        self.assertEqual(1, len(seen.pop('locked')))

    def test_a_refused_call_drops_nothing_and_opens_nothing(self):
        seen = self._record_drop()
        self._give({SOURCE_NS: uuids.other})
        real_open = os.open

        def no_device(path, *args):
            # The owners file is read; no namespace's device is opened.
            self.assertNotIn(path, (self.src, self.dst))
            return real_open(path, *args)
        with mock.patch('os.open', side_effect=no_device):
            exc = self.assertRaises(wire.HelperError, self._send)
        self.assertEqual(wire.EXIT_DENIED, exc.code)
        self.assertEqual({}, seen)

    def test_calls_from_within_a_process_keep_its_privileges(self):
        helper._config['run_as'] = None
        with mock.patch('os.setresuid') as setresuid:
            self._receive(self._send())
        setresuid.assert_not_called()

    def test_caller_is_the_sudo_user_or_nobody(self):
        with mock.patch('os.geteuid', return_value=1000):
            # Not root: nothing to drop.
            self.assertIsNone(helper._caller())
        with mock.patch('os.geteuid', return_value=0):
            # The user sudo ran it for, with that user's group.
            with mock.patch.dict(os.environ, {'SUDO_UID': '1234'}), \
                    mock.patch('pwd.getpwuid', return_value=mock.Mock(
                        pw_uid=1234, pw_gid=5678)) as getpwuid:
                self.assertEqual((1234, 5678), helper._caller())
            getpwuid.assert_called_once_with(1234)
            nobody = pwd.getpwnam('nobody')
            # Root itself, or root without sudo.
            for env in ({}, {'SUDO_UID': '0', 'SUDO_GID': '0'}):
                with mock.patch.dict(os.environ, env, clear=True):
                    self.assertEqual((nobody.pw_uid, nobody.pw_gid),
                                     helper._caller(), env)

    @mock.patch('os.geteuid', return_value=0)
    def test_program_runs_as_root_only_isolated(self, mock_geteuid):
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        seen = self._record_drop()
        before = self._read(self.dst)
        # The tests do not run isolated, as "python3 -I" would.
        self.assertFalse(sys.flags.isolated)
        with mock.patch.object(helper.sys, 'argv',
                               ['nova-vpmem-copy', '--instance',
                                uuids.instance, 'zero', '--namespace',
                                DEST_NS]):
            self.assertEqual(wire.EXIT_USAGE, helper.main())
        self.assertEqual({}, seen)
        self.assertEqual(before, self._read(self.dst))
        stderr.seek(0)
        self.assertIn('run it as root only as "python3 -I -m '
                      'nova.cmd.vpmem_copy"', stderr.read())

    def test_program_drops_to_its_caller(self):
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        seen = self._record_drop()
        # Not as root here, so not isolated either.
        with mock.patch('os.geteuid', return_value=1000), \
                mock.patch.object(helper, '_caller', return_value=(7, 8)), \
                mock.patch.object(helper.sys, 'argv',
                                  ['nova-vpmem-copy', '--instance',
                                   uuids.instance, 'zero', '--namespace',
                                   DEST_NS]):
            self.assertEqual(0, helper.main())
        self.assertEqual((7, 7, 7), seen['uids'])


class AllowListTestCase(test.NoDBTestCase):
    """Which namespaces the helper may touch: ndctl's, named by nova."""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        # The files of this test are the test user's, not root's.
        self.useFixture(fixtures.MockPatchObject(helper, 'CONFIG_OWNER',
                                                 os.geteuid()))
        self.useFixture(fixtures.MockPatchObject(
            helper, '_config', {'files': (), 'directories': (),
                                'instance': uuids.instance, 'run_as': None}))
        # The configuration is read once per run.
        helper._run.clear()
        self.addCleanup(helper._run.clear)

    def _conf_file(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, 0o640)
        return path

    def _nova_conf(self, *texts):
        paths = [self._conf_file('nova%d.conf' % i, text)
                 for i, text in enumerate(texts)]
        self.useFixture(fixtures.MonkeyPatch(
            'nova.cmd.vpmem_copy.NOVA_CONFIG_FILES', tuple(paths)))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.cmd.vpmem_copy.NOVA_CONFIG_DIR',
            os.path.join(self.tmp, 'nova.conf.d')))
        return paths

    def _names(self, files=(), directories=()):
        """The namespace names of a run given these configuration options.
        """
        helper._config.update(files=files, directories=directories)
        helper._run.clear()
        return helper._nova_namespace_names()

    def test_config_of_the_command_line_replaces_the_defaults(self):
        # devstack's nova-compute reads /etc/nova/nova-cpu.conf.
        self._nova_conf('[libvirt]\npmem_namespaces = A:ns0\n')
        cpu_conf = self._conf_file(
            'nova-cpu.conf', '[libvirt]\npmem_namespaces = A:ns1\n')
        os.mkdir(os.path.join(self.tmp, 'conf.d'))
        self._conf_file('conf.d/10-pmem.conf',
                        '[libvirt]\npmem_namespaces = A:ns1|ns2\n')
        self.assertEqual({'ns0'}, self._names())
        self.assertEqual({'ns1'}, self._names(files=[cpu_conf]))
        self.assertEqual({'ns1', 'ns2'}, self._names(
            files=[cpu_conf], directories=[os.path.join(self.tmp, 'conf.d')]))

    def test_main_reads_the_config_it_is_given(self):
        self._nova_conf('[libvirt]\npmem_namespaces = A:ns0\n')
        cpu_conf = self._conf_file(
            'nova-cpu.conf', '[libvirt]\npmem_namespaces = A:ns1\n')
        conf_d = os.path.join(self.tmp, 'd')
        os.mkdir(conf_d)
        # The configuration of an earlier run is not reused.
        self.assertEqual('A:ns0', helper._nova_config().get(
            'libvirt', 'pmem_namespaces'))
        with mock.patch.object(helper, '_nova_namespace_names',
                               side_effect=wire.HelperError(
                                   wire.EXIT_DENIED, 'no')) as names:
            self.assertEqual(wire.EXIT_DENIED, helper.main(
                ['--config-file', cpu_conf, '--config-dir', conf_d,
                 '--instance', uuids.other, 'zero', '--namespace', 'ns1']))
        names.assert_called_once_with()
        # The run read the files it was given.
        self.assertEqual('A:ns1', helper._nova_config().get(
            'libvirt', 'pmem_namespaces'))
        # A call from within a process keeps its privileges.
        self.assertEqual({'files': [cpu_conf], 'directories': [conf_d],
                          'instance': uuids.other, 'run_as': None},
                         helper._config)

    def test_config_that_another_user_may_write_is_refused(self):
        path, = self._nova_conf('[libvirt]\npmem_namespaces = A:ns0\n')
        for mode in (0o660, 0o646):
            os.chmod(path, mode)
            exc = self.assertRaises(wire.HelperError, self._names)
            self.assertEqual(wire.EXIT_DENIED, exc.code)
            self.assertIn('%s must be owned by uid' % path, str(exc))

    def test_config_of_another_owner_is_refused(self):
        self._nova_conf('[libvirt]\npmem_namespaces = A:ns0\n')
        self.useFixture(fixtures.MockPatchObject(helper, 'CONFIG_OWNER',
                                                 os.geteuid() + 1))
        exc = self.assertRaises(wire.HelperError, self._names)
        self.assertEqual(wire.EXIT_DENIED, exc.code)

    def test_missing_config_file_that_was_named_is_an_error(self):
        self._nova_conf('[libvirt]\npmem_namespaces = A:ns0\n')
        exc = self.assertRaises(
            wire.HelperError, self._names,
            files=[os.path.join(self.tmp, 'missing.conf')])
        self.assertEqual(wire.EXIT_USAGE, exc.code)
        # The defaults need not all exist.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.cmd.vpmem_copy.NOVA_CONFIG_FILES',
            helper.NOVA_CONFIG_FILES + ('/nonexistent/nova.conf',)))
        self.assertEqual({'ns0'}, self._names())

    def test_nova_namespace_names_from_nova_conf(self):
        self._nova_conf('[libvirt]\npmem_namespaces = 4GB:ns0,X:ns9\n',
                        '[DEFAULT]\ndebug = true\n[libvirt]\n'
                        'pmem_namespaces = 128G:ns0|ns1,SMALL:ns3\n')
        self.assertEqual({'ns0', 'ns1', 'ns3'}, self._names())

    def test_no_pmem_namespaces_in_nova_conf_allows_nothing(self):
        self._nova_conf('[libvirt]\nvirt_type = kvm\n')
        exc = self.assertRaises(wire.HelperError, self._names)
        self.assertEqual(wire.EXIT_DENIED, exc.code)

    @mock.patch('shutil.which', return_value='/usr/bin/ndctl')
    @mock.patch('subprocess.run')
    def test_ndctl_runs_once_per_run(self, mock_run, mock_which):
        self._nova_conf('[libvirt]\npmem_namespaces = A:ns0\n')
        mock_run.return_value = mock.Mock(returncode=0, stdout=jsonutils.
            dumps([{'dev': 'namespace0.0', 'mode': 'devdax', 'size': 4096,
                    'chardev': 'dax0.0', 'align': 4096, 'name': 'ns0'}]
                  ).encode())
        with mock.patch.object(helper, '_owners', return_value=(
                {'ns0': uuids.instance}, {})):
            # As check does for each of its namespaces.
            for _ in range(3):
                self.assertEqual(
                    '/dev/dax0.0',
                    helper._check_namespace('ns0', 0, None,
                                            'read')[0]['path'])
            mock_run.assert_called_once()
            # The next run lists them again.
            helper.main(['--instance', uuids.instance, 'zero',
                         '--namespace', 'ns9'])
        self.assertEqual(2, mock_run.call_count)

    @mock.patch('shutil.which', return_value='/usr/bin/ndctl')
    @mock.patch('subprocess.run')
    def test_namespaces_from_ndctl(self, mock_run, mock_which):
        # ns3 is a device-DAX namespace that nova does not give to guests.
        self._nova_conf('[libvirt]\npmem_namespaces = A:ns0|ns1\n')
        mock_run.return_value = mock.Mock(returncode=0, stdout=jsonutils.
            dumps([
                {'dev': 'namespace0.0', 'mode': 'devdax', 'size': 4225761280,
                 'daxregion': {'id': 0, 'size': 4225761280, 'align': 2097152,
                               'devices': [{'chardev': 'dax0.0',
                                            'size': 4225761280}]},
                 'name': 'ns0'},
                # Older ndctl: chardev and align at the top level.
                {'dev': 'namespace1.0', 'mode': 'devdax', 'size': 1073741824,
                 'chardev': 'dax1.0', 'align': 1073741824, 'name': 'ns1'},
                {'dev': 'namespace2.0', 'mode': 'fsdax', 'size': 1},
                {'dev': 'namespace3.0', 'mode': 'devdax', 'size': 1073741824,
                 'chardev': 'dax3.0', 'align': 2097152, 'name': 'ns3'},
            ]).encode())
        self.assertEqual(
            {'ns0': {'path': '/dev/dax0.0', 'size': 4225761280,
                     'align': 2097152},
             'ns1': {'path': '/dev/dax1.0', 'size': 1073741824,
                     'align': 1073741824}},
            helper.known_namespaces())
        # Found in fixed directories only, and run with a fixed PATH.
        mock_which.assert_called_once_with('ndctl', path=helper.SAFE_PATH)
        mock_run.assert_called_once_with(
            ['/usr/bin/ndctl', 'list', '-X'], check=True,
            capture_output=True, timeout=60, env={'PATH': helper.SAFE_PATH})

    def _owners_path(self, text):
        """The owners file of a run whose configuration is text."""
        config = configparser.ConfigParser(interpolation=None)
        config.read_string(text)
        with mock.patch.object(helper, '_nova_config', return_value=config):
            return helper._owners_path()

    def test_owners_path_of_nova_conf(self):
        self.assertEqual('/var/lib/nova/vpmem-owners-compute-1.json',
                         self._owners_path('[DEFAULT]\nstate_path = /var/'
                                           'lib/nova\nhost = compute-1\n'))

    def test_owners_path_defaults_are_novas(self):
        # nova's [DEFAULT] state_path is $pybasedir, where the nova package
        # is installed, and its host the host name.
        pybasedir, = [opt.default for opt in paths.ALL_OPTS
                      if opt.name == 'pybasedir']
        host, = [opt.default for opt in netconf.netconf_opts
                 if opt.name == 'host']
        self.assertEqual(os.path.dirname(os.path.dirname(nova.__file__)),
                         pybasedir)
        for text in ('', '[DEFAULT]\nstate_path =\nhost =\n',
                     '[DEFAULT]\ndebug = true\n'):
            self.assertEqual(
                os.path.join(pybasedir, 'vpmem-owners-%s.json' % host),
                self._owners_path(text), text)
        with mock.patch.object(socket, 'gethostname',
                               return_value='compute-2'):
            self.assertEqual(
                '/srv/nova/vpmem-owners-compute-2.json',
                self._owners_path('[DEFAULT]\nstate_path = /srv/nova\n'))

    def test_owners_path_with_substitutions_is_refused(self):
        # The helper does not interpolate as oslo.config does.
        for text in ('[DEFAULT]\nstate_path = $pybasedir/state\n',
                     '[DEFAULT]\nstate_path = /var/lib/${x}\n',
                     '[DEFAULT]\nstate_path = /var/lib/nova\n'
                     'host = $my_ip\n'):
            exc = self.assertRaises(wire.HelperError, self._owners_path,
                                    text)
            self.assertEqual(wire.EXIT_USAGE, exc.code, text)
            self.assertIn('without $ substitutions', str(exc))

    def test_owners_file_in_the_state_path_of_nova_conf(self):
        state = os.path.join(self.tmp, 'state')
        os.mkdir(state)
        self._nova_conf('[DEFAULT]\nstate_path = %s\nhost = compute-1\n'
                        % state, '[libvirt]\npmem_namespaces = A:ns0\n')
        # Another host's file is not this host's.
        with open(os.path.join(state, 'vpmem-owners-compute-2.json'),
                  'w') as f:
            f.write(jsonutils.dumps({'owners': {'ns0': uuids.other}}))
        self.assertEqual(({}, {}), helper._owners())
        with open(os.path.join(state, 'vpmem-owners-compute-1.json'),
                  'w') as f:
            f.write(jsonutils.dumps({'owners': {'ns0': uuids.instance},
                                     'incoming': {'ns0': uuids.instance}}))
        helper._run.clear()
        self.assertEqual(({'ns0': uuids.instance}, {'ns0': uuids.instance}),
                         helper._owners())
