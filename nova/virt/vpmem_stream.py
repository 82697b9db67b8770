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

"""The vPMEM copy's stream: its format, and the code that writes and reads it.

``nova-vpmem-copy`` (``nova.cmd.vpmem_copy``) checks as root that a copy
may use a namespace, opens and locks its device, drops its privileges and
only then runs ``send``, ``receive`` or ``zero`` of this module on the
device's mapping:

``send``
    writes a range as a framed stream: all-zero chunks become small ZERO
    records, other chunks DATA records with a per-chunk digest, and an END
    record carries the counts. It may read a range that a running guest maps
    (the first pass of a pre-copy), through a private copy of each chunk.
    Given the record of an earlier pass, it sends a chunk whose digest is
    unchanged as a SAME record without its data.
``receive``
    writes a framed stream into a range. Zero chunks are zeroed only where
    needed, every DATA chunk is hashed again where it landed, and a
    truncated or corrupted stream or a missing END fails. The range may
    start at another offset than the one it was read from: a guest's label
    area moves to the end of a larger namespace. A SAME record is checked
    against the destination's own chunk; one that does not match is listed
    as stale, for the caller to send again. A pre-copy's first pass prints
    the digests of every DATA chunk that landed: the pass's record.
``zero``
    zeroes a range, writing only chunks that are not zero already.

The copy engine (``nova.virt.libvirt.vpmem_copy``) builds the record of a
pre-copy from this format. The owners file is written by nova-compute
(``nova.virt.libvirt.vpmem_owners``) and read by the helper. The helper
runs as root and imports this module, so it depends on the standard library
only; the optional digest modules are imported after the helper dropped its
privileges.
"""

import ctypes
import fcntl
import functools
import hashlib
import importlib.util
import json
import mmap
import os
import stat
import struct
import sys
import time

# The stream starts with MAGIC and STREAM_HDR: the digest of DATA records,
# the digest of SAME records (empty without a record), range offset, range
# length and chunk size. Each record is RECORD_HDR: kind, offset (relative
# to the range), length, digest; DATA records are followed by ``length``
# bytes. SAME records carry only the digest of a chunk the destination
# already holds. END carries the number of bytes covered in ``offset`` and
# the number of chunk records in ``length``.
PROTOCOL = 3
MAGIC = b'NVPMCP%d\n' % PROTOCOL
STREAM_HDR = struct.Struct('<16s16sQQI')
DIGEST_SIZE = 32
RECORD_HDR = struct.Struct('<BQI%ds' % DIGEST_SIZE)
DATA, ZERO, SAME, END = 1, 2, 3, 255
# The record of an earlier pass (send --with-record, on stdin): RECORD_MAGIC,
# a STREAM_HDR naming the record's cryptographic digest, its fast digest
# (may be empty) and the range it covers, then per chunk of the range the
# two digests, all zero bytes for a chunk it has none for.
RECORD_MAGIC = b'NVPMRC%d\n' % PROTOCOL
NO_DIGEST = bytes(DIGEST_SIZE)

DEFAULT_CHUNK = 1024 * 1024
# Bounds on a chunk: a page at least, so that neither the per-chunk work nor
# a record (two digests per chunk) can be made to grow without limit.
MIN_CHUNK = 4096
MAX_CHUNK = 64 * 1024 * 1024

# The digests a SAME record may rely on. The guest controls the data, so two
# chunks with the same digest must not be craftable: 256-bit cryptographic
# digests only.
CRYPTO_DIGESTS = ('blake3', 'sha256', 'blake2b')

# The owners file of a host, OWNERS_FILE % [DEFAULT] host in [DEFAULT]
# state_path: {"owners": {NAME: OWNER}, "incoming": {NAME: UUID}}. OWNER,
# whose data the namespace may hold, is an instance UUID or ZEROED.
# "incoming" holds the namespaces this host gave to an instance that moves
# here, until it runs here: the only ones a copy may write. The first
# format of the file was the "owners" mapping alone.
OWNERS_FILE = 'vpmem-owners-%s.json'
ZEROED = 'zeroed'
# A few KiB on any real host; the helper reads no more than this.
MAX_OWNERS_FILE_SIZE = 1024 * 1024


def parse_owners(text):
    """Return the (owners, incoming) mappings of an owners file's text.

    :raises: ValueError if the text is not an owners file
    """
    data = json.loads(text)  # noqa: N324 the helper imports no oslo
    if isinstance(data, dict) and not (
            set(data) <= {'owners', 'incoming'} and
            isinstance(data.get('owners'), dict)):
        data = {'owners': data}
    if not isinstance(data, dict):
        raise ValueError('an owners file holds a JSON object')
    mappings = data.get('owners'), data.get('incoming', {})
    for mapping in mappings:
        if not (isinstance(mapping, dict) and
                all(isinstance(v, str) for v in mapping.values())):
            raise ValueError('an owners file maps names to strings')
    return mappings


# -- the data path -----------------------------------------------------------
# A receiver reports progress every PROGRESS_EVERY bytes and at least every
# PROGRESS_SECONDS, so that one whose caller died (a killed nova-compute)
# fails on its next write within a second, with its ssh connection and its
# sender, instead of copying on.
PROGRESS_EVERY = 64 * 1024 * 1024
PROGRESS_SECONDS = 1.0
F_SETPIPE_SZ = 1031
# Prefaulting the mapping in one call is much cheaper than a page fault per
# page while copying.
_MAP_POPULATE = getattr(mmap, 'MAP_POPULATE', 0)

# Exit codes of the helper: the caller only needs "zero or not", the values
# help humans.
EXIT_USAGE = 2
EXIT_TRUNCATED = 3
EXIT_MISMATCH = 4
EXIT_PROTOCOL = 5
EXIT_DENIED = 6


class HelperError(Exception):
    """A failed helper call, with the exit code it ends with."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# Digests by name, fastest first, with the module that provides them (None
# for the standard library). Modules are imported only when used.
_DIGEST_MODULES = {'xxh3_64': 'xxhash', 'blake3': 'blake3', 'sha256': None,
                   'blake2b': None}


def available_digests():
    return [name for name, module in _DIGEST_MODULES.items()
            if module is None or importlib.util.find_spec(module)]


def best_digest():
    return available_digests()[0]


@functools.lru_cache(maxsize=None)
def _digest_function(name):
    if name == 'xxh3_64':
        import xxhash
        return lambda data: xxhash.xxh3_64(data).digest()
    if name == 'blake3':
        import blake3
        return lambda data: blake3.blake3(data).digest(length=DIGEST_SIZE)
    if name == 'sha256':
        return lambda data: hashlib.sha256(data).digest()
    return lambda data: hashlib.blake2b(data,
                                        digest_size=DIGEST_SIZE).digest()


def digest(name, view):
    """Digest of view, padded to the DIGEST_SIZE bytes of a record."""
    if name == 'none':
        return NO_DIGEST
    return _digest_function(name)(view).ljust(DIGEST_SIZE, b'\0')


class Mapping(object):
    """A MAP_SHARED window onto [offset, offset + length) of an open file.

    It takes over the file descriptor: closing it drops the locks the
    helper holds on the device. Device-DAX only maps at multiples of its
    alignment, so the window is widened to the alignment and ``view``
    exposes the requested range.
    """

    def __init__(self, fd, offset, length, align, writable):
        self.fd = fd
        self.is_dax = stat.S_ISCHR(os.fstat(fd).st_mode)
        align = max(align, mmap.PAGESIZE)
        start = offset - offset % align
        end = offset + length
        if end % align:
            end += align - end % align
        if not self.is_dax:
            end = min(end, os.fstat(fd).st_size)
        self.map = mmap.mmap(
            fd, end - start, mmap.MAP_SHARED | _MAP_POPULATE,
            mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0),
            offset=start)
        self.view = memoryview(self.map)[offset - start:
                                         offset - start + length]
        self._persist = None
        if writable and self.is_dax:
            self._persist = _libpmem_persist()

    def persist(self):
        """Make the written range durable.

        msync() is not supported on device-DAX, so flush the CPU caches
        with libpmem's pmem_persist() there, as daxio does.
        """
        if self._persist:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(self.view))
            self._persist(ctypes.c_void_p(addr),
                          ctypes.c_size_t(len(self.view)))
        else:
            self.map.flush()

    def close(self):
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            # A traceback still references a slice of the mapping; it is
            # unmapped when the process exits.
            pass
        os.close(self.fd)


def _libpmem_persist():
    # By soname through the dynamic loader's cache: find_library would run
    # compilers found on PATH.
    try:
        lib = ctypes.CDLL('libpmem.so.1')
    except OSError:
        raise HelperError(EXIT_USAGE, 'libpmem (PMDK) is required to write '
                          'device-DAX namespaces')
    lib.pmem_persist.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.pmem_persist.restype = None
    return lib.pmem_persist


def _prepare_pipe(fd):
    """Make the stream fd blocking, with a bigger pipe buffer if possible."""
    # A caller using green (eventlet) pipes hands over non-blocking fds.
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    # Bigger pipe buffers divide the syscalls per chunk; best effort.
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1024 * 1024)
    except OSError:
        pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, view):
    """Fill view from fd; return the number of bytes read (short at EOF)."""
    done = 0
    while done < len(view):
        n = os.readv(fd, [view[done:]])
        if n == 0:
            break
        done += n
    return done


def is_zero(view, zero):
    """Tell whether a memoryview holds only zero bytes.

    bytes() compares at memcmp speed, unlike memoryview's element-wise
    comparison, and the cheap look at the first bytes skips the full copy
    for dense data.
    """
    if bytes(view[:64]) != zero[:min(64, len(view))]:
        return False
    return bytes(view) == zero[:len(view)]


class Record(object):
    """The record of an earlier pass, as send reads it.

    Read one chunk's entry at a time, so that its size never decides how
    much memory the sender takes.
    """

    def __init__(self, in_fd, digest, fast_digest):
        self.in_fd = in_fd
        self.digest = digest
        # Cheap to tell a chunk that changed; '' if not available here.
        self.fast_digest = fast_digest
        self.entry = bytearray(2 * DIGEST_SIZE)
        self.truncated = False

    def next_chunk(self):
        """Return the next chunk's (digest, fast digest), or None.

        None for a chunk the record has no digest for, and for every chunk
        after the record ends early: those chunks are sent as DATA.
        """
        if self.truncated:
            return None
        if _read_exact(self.in_fd, memoryview(self.entry)) < len(self.entry):
            sys.stderr.write('nova-vpmem-copy send: the record on stdin '
                             'ended early, sending the other chunks\n')
            self.truncated = True
            return None
        chunk_digest = bytes(self.entry[:DIGEST_SIZE])
        if chunk_digest == NO_DIGEST:
            return None
        return chunk_digest, bytes(self.entry[DIGEST_SIZE:])


def read_record(in_fd, offset, length, chunk):
    """Read the header of an earlier pass's record.

    :returns: a Record to read the chunks' entries from, or None when in
        doubt, and so every chunk is sent: a record for another range or
        chunk size, with a digest that is not cryptographic or not
        available here, or a truncated header.
    """
    head = bytearray(len(RECORD_MAGIC) + STREAM_HDR.size)
    if (_read_exact(in_fd, memoryview(head)) == len(head) and
            head.startswith(RECORD_MAGIC)):
        name, fast, r_offset, r_length, r_chunk = STREAM_HDR.unpack_from(
            head, len(RECORD_MAGIC))
        name = name.rstrip(b'\0').decode('ascii', 'replace')
        fast = fast.rstrip(b'\0').decode('ascii', 'replace')
        if ((r_offset, r_length, r_chunk) == (offset, length, chunk) and
                name in CRYPTO_DIGESTS and name in available_digests()):
            return Record(in_fd, name,
                          fast if fast in available_digests() else '')
    sys.stderr.write('nova-vpmem-copy send: the record on stdin does not '
                     'fit this range, sending every chunk\n')
    return None


def _send_chunk(out_fd, pos, view, zero, digest_name, record, recorded):
    if is_zero(view, zero):
        _write_all(out_fd, RECORD_HDR.pack(ZERO, pos, len(view), b''))
        return
    data_digest = None
    if recorded:
        changed = False
        if record.fast_digest:
            # A cheap digest that differs proves a change; one that matches
            # proves nothing, as the guest may craft it.
            fast = digest(record.fast_digest, view)
            changed = fast != recorded[1]
            if record.fast_digest == digest_name:
                data_digest = fast
        if not changed:
            chunk_digest = digest(record.digest, view)
            if chunk_digest == recorded[0]:
                # The destination holds it already; it checks that it does.
                _write_all(out_fd, RECORD_HDR.pack(SAME, pos, len(view),
                                                   chunk_digest))
                return
    if data_digest is None:
        data_digest = digest(digest_name, view)
    _write_all(out_fd, RECORD_HDR.pack(DATA, pos, len(view), data_digest))
    _write_all(out_fd, view)


def send(view, offset, chunk, digest_name, out_fd, rate=0, live=False,
         record=None, stop_after=0):
    """Send the range of a mapping as a framed stream.

    :param view: the range, which starts at ``offset`` of its namespace
    :param live: a running guest may write to the range meanwhile: send
        each chunk through a private copy, so that its digest matches the
        bytes sent
    :param record: a Record of an earlier pass; its own digest checks the
        unchanged chunks, ``digest_name`` the others
    :param rate: bytes per second, 0 for no limit
    :param stop_after: end the stream early, at a chunk boundary, after this
        many seconds (0: never); only a pre-copy's receiver accepts that
    """
    _prepare_pipe(out_fd)
    length = len(view)
    zero = bytes(chunk)
    snapshot = memoryview(bytearray(chunk)) if live else None
    records = 0
    start = time.monotonic()
    _write_all(out_fd, MAGIC + STREAM_HDR.pack(
        digest_name.encode(), record.digest.encode() if record else b'',
        offset, length, chunk))
    for pos in range(0, length, chunk):
        if stop_after and time.monotonic() - start > stop_after:
            break
        recorded = record.next_chunk() if record else None
        with view[pos:pos + chunk] as part:
            if snapshot is not None:
                snapshot[:len(part)] = part
                part = snapshot[:len(part)]
            _send_chunk(out_fd, pos, part, zero, digest_name, record,
                        recorded)
        records += 1
        if rate:
            ahead = min(pos + chunk, length) / rate - (
                time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    _write_all(out_fd, RECORD_HDR.pack(END, min(records * chunk, length),
                                       records, b''))


def _print_record(out, pos, view, chunk_digest):
    """Print a landed chunk's digests for a first pass's record.

    With the fast digest too, the second pass can tell most changed chunks
    without the cryptographic digest.
    """
    fast = best_digest()
    fast_hex = ('%s %s' % (fast, _digest_function(fast)(view).hex())
                if fast not in CRYPTO_DIGESTS else '')
    out.write('chunk %d %d %s %s\n' % (pos, len(view), chunk_digest.hex(),
                                       fast_hex))


def read_header(in_fd, offset, length, precopy=False):
    """Read and check a stream's header; return (digest, same digest, chunk).

    :param offset: the offset the stream's range was read from
    """
    _prepare_pipe(in_fd)
    hdr = bytearray(len(MAGIC) + STREAM_HDR.size)
    if _read_exact(in_fd, memoryview(hdr)) < len(hdr):
        raise HelperError(EXIT_TRUNCATED, 'stream truncated before its header')
    if hdr[:len(MAGIC)] != MAGIC:
        raise HelperError(EXIT_PROTOCOL, 'not a nova-vpmem-copy stream')
    digest_name, same_name, s_offset, s_length, chunk = (
        STREAM_HDR.unpack_from(hdr, len(MAGIC)))
    digest_name = digest_name.rstrip(b'\0').decode('ascii', 'replace')
    same_name = same_name.rstrip(b'\0').decode('ascii', 'replace')
    if (s_offset, s_length) != (offset, length):
        raise HelperError(EXIT_PROTOCOL, 'stream carries range %d+%d, '
                          'expected %d+%d' % (s_offset, s_length, offset,
                                              length))
    for used in (digest_name, same_name):
        if used not in ('none', '') and used not in available_digests():
            raise HelperError(EXIT_PROTOCOL, 'digest %s is not available on '
                              'this host' % used)
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise HelperError(EXIT_PROTOCOL, 'bad chunk size %d' % chunk)
    if precopy and digest_name not in CRYPTO_DIGESTS:
        raise HelperError(EXIT_PROTOCOL, 'a first pass needs a '
                          'cryptographic digest, not %s' % digest_name)
    return digest_name, same_name, chunk


def receive(dev, header, stats, in_fd, out, precopy=False):
    """Write the records of a framed stream into the range of a Mapping.

    :param header: what read_header() returned for the stream
    :param stats: the final report, counted up here
    :param precopy: this is the first pass of a pre-copy: print ``chunk POS
        LEN DIGEST [FAST-NAME FAST-DIGEST]`` for every DATA chunk that landed
        (the pass's record), and accept a stream that ends early
    """
    digest_name, same_name, chunk = header
    length = len(dev.view)
    zero = bytes(chunk)
    pos = records = 0
    next_progress = PROGRESS_EVERY
    progress_due = time.monotonic() + PROGRESS_SECONDS
    rec = bytearray(RECORD_HDR.size)
    while True:
        if _read_exact(in_fd, memoryview(rec)) < len(rec):
            raise HelperError(EXIT_TRUNCATED, 'stream truncated at byte %d '
                              'of %d (no END record)' % (pos, length))
        kind, r_off, r_len, r_digest = RECORD_HDR.unpack(rec)
        if kind == END:
            if precopy and r_off < length:
                length = stats['length'] = pos
            if (r_off, r_len) != (length, records) or pos != length:
                raise HelperError(EXIT_PROTOCOL, 'END record says %d bytes '
                                  'in %d chunks, received %d bytes in %d '
                                  'chunks' % (r_off, r_len, pos, records))
            break
        if (kind not in (DATA, ZERO, SAME) or r_off != pos or
                not 0 < r_len <= chunk or pos + r_len > length):
            raise HelperError(EXIT_PROTOCOL, 'unexpected record kind %d at '
                              '%d+%d, expected offset %d' % (kind, r_off,
                                                             r_len, pos))
        with dev.view[pos:pos + r_len] as view:
            if kind == DATA:
                if _read_exact(in_fd, view) < r_len:
                    raise HelperError(EXIT_TRUNCATED, 'stream truncated '
                                      'inside the chunk at byte %d' % pos)
                # Hash what landed in the destination, not the buffer it
                # came from.
                if (digest_name != 'none' and
                        digest(digest_name, view) != r_digest):
                    raise HelperError(EXIT_MISMATCH, 'chunk at byte %d does '
                                      'not match its digest' %
                                      (stats['offset'] + pos))
                stats['data_bytes'] += r_len
                if precopy:
                    _print_record(out, pos, view, r_digest)
            elif kind == SAME:
                if same_name not in CRYPTO_DIGESTS:
                    raise HelperError(EXIT_PROTOCOL, 'SAME record in a '
                                      'stream without a cryptographic '
                                      'digest for it')
                # A stale record: the caller sends the chunk again.
                if digest(same_name, view) != r_digest:
                    stats['stale'].append([pos, r_len])
                stats['same_bytes'] += r_len
            else:
                # The destination is not trusted to be zero already.
                if not is_zero(view, zero):
                    view[:] = zero[:r_len]
                    stats['zero_filled_bytes'] += r_len
                stats['zero_bytes'] += r_len
        pos += r_len
        records += 1
        if pos >= next_progress or time.monotonic() >= progress_due:
            out.write('progress %d\n' % pos)
            out.flush()
            next_progress = pos + PROGRESS_EVERY
            progress_due = time.monotonic() + PROGRESS_SECONDS
    dev.persist()


def zero(dev):
    """Zero the range of a Mapping; return the number of bytes written."""
    zeroes = bytes(DEFAULT_CHUNK)
    filled = 0
    for pos in range(0, len(dev.view), DEFAULT_CHUNK):
        with dev.view[pos:pos + DEFAULT_CHUNK] as view:
            if not is_zero(view, zeroes):
                view[:] = zeroes[:len(view)]
                filled += len(view)
    dev.persist()
    return filled
